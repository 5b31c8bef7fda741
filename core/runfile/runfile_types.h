/* runfile_types.h — the value types of the run-file API (runfile.h): the run handle, attribute values, the lists
 * and series the readers return, checkpoint entries. The lowest layer of core/runfile/: every run-file source reads
 * these (the frees are in runfile_h5.c, m2_series_free in runfile_metrics.c). */
#ifndef M2_RUNFILE_TYPES_H
#define M2_RUNFILE_TYPES_H
#include <stdbool.h>
#include <stdint.h>
#include "../tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct m2_run m2_run;

typedef enum m2_value_kind { M2_VAL_NONE = 0, M2_VAL_I64, M2_VAL_F64, M2_VAL_BOOL, M2_VAL_STR } m2_value_kind;
typedef struct m2_value {
  m2_value_kind kind;
  int64_t i;  /* I64, and BOOL (0 / 1) */
  double f;   /* F64 */
  char *s;    /* STR: borrowed when passed in; owned (free with m2_value_free) when returned */
} m2_value;
static inline m2_value m2_vi64(int64_t i) { m2_value v = {M2_VAL_I64, i, 0, NULL}; return v; }
static inline m2_value m2_vf64(double f) { m2_value v = {M2_VAL_F64, 0, f, NULL}; return v; }
static inline m2_value m2_vbool(bool b) { m2_value v = {M2_VAL_BOOL, b ? 1 : 0, 0, NULL}; return v; }
static inline m2_value m2_vstr(const char *s) { m2_value v = {M2_VAL_STR, 0, 0, (char *)s}; return v; }
void m2_value_free(m2_value *v); /* frees an owned string; leaves kind NONE */

/* Lists returned by the read helpers; free them with the matching _free. */
typedef struct m2_strlist { int n; char **v; } m2_strlist;
typedef struct m2_i64list { int n; int64_t *v; } m2_i64list;
void m2_strlist_free(m2_strlist *l);
void m2_i64list_free(m2_i64list *l);

typedef struct m2_kv { const char *key; m2_value v; } m2_kv;

typedef struct m2_series {
  int64_t n;
  int64_t *step;  /* (n) */
  double *value;  /* (n) */
  double *time;   /* (n), or NULL when the series has no time dataset */
} m2_series;
void m2_series_free(m2_series *s);

typedef struct m2_series_stats {
  int64_t count;
  int64_t last_step;
  double last;
  int goal;               /* +1: larger is better, -1: smaller is better */
  double best;            /* NaN when every value is NaN (or count == 0) */
  int64_t best_step;
  double min, max;        /* over the non-NaN values */
  int64_t min_step, max_step;
} m2_series_stats;

typedef struct m2_ckpt_tensor { const char *path; const m2_tensor *t; } m2_ckpt_tensor;

#ifdef __cplusplus
}
#endif
#endif
