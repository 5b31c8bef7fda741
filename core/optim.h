/* optim.h — optimizers (SGD with momentum, AdamW), global grad-norm clipping, LR schedules.
 *
 * An optimizer holds a list of parameters (leaf tensors with requires_grad) and their
 * state tensors. step() reads each parameter's .grad (a parameter without a grad is
 * skipped) and updates the parameter in place, not recorded by autograd. The learning
 * rate is passed to each step (the schedule lives outside, in m2_schedule). */
#ifndef M2_OPTIM_H
#define M2_OPTIM_H
#include "tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum m2_optim_kind { M2_OPTIM_SGD, M2_OPTIM_ADAMW } m2_optim_kind;

typedef struct m2_sgd_opts {
  double momentum;      /* 0 = plain SGD */
  double weight_decay;  /* L2 added to the gradient (not decoupled) */
  bool nesterov;
} m2_sgd_opts;

typedef struct m2_adamw_opts {
  double beta1, beta2;  /* defaults 0.9, 0.999 when both are 0 */
  double eps;           /* default 1e-8 when 0 */
  double weight_decay;  /* decoupled: p -= lr * wd * p, skipped for no_decay params */
} m2_adamw_opts;

typedef struct m2_optim m2_optim;

m2_optim *m2_sgd_new(const m2_sgd_opts *o);
m2_optim *m2_adamw_new(const m2_adamw_opts *o);
void m2_optim_free(m2_optim *o);
m2_optim_kind m2_optim_kind_of(const m2_optim *o);

/* Add a parameter (retained). name is used in messages and checkpoints. */
m2_status m2_optim_add(m2_optim *o, m2_tensor *param, const char *name, bool no_decay);
int m2_optim_nparams(const m2_optim *o);
m2_tensor *m2_optim_param(const m2_optim *o, int i); /* borrowed */

m2_status m2_optim_step(m2_optim *o, double lr);
/* Set every parameter's .grad to zero (keeps the buffers). */
m2_status m2_optim_zero_grad(m2_optim *o);
/* Drop every parameter's .grad (set it to none): the next backward adopts its fresh gradient tensors instead of adding
 * them into zeroed buffers (one add and one copy a parameter a step saved); a parameter that then gets no gradient
 * is skipped by the next step. What m2.train does between steps. */
void m2_optim_clear_grads(m2_optim *o);
int64_t m2_optim_steps(const m2_optim *o);          /* steps taken (AdamW bias correction) */
void m2_optim_set_steps(m2_optim *o, int64_t steps); /* when restoring a checkpoint */

/* ZeRO-1 (core/dist_dp.c): this rank updates only elements [lo, hi) of parameter i (its flattened, row-major
 * elements); its state tensors then hold those hi - lo elements only (1-D), and a parameter whose range is empty
 * gets no state and no update. Set before the first step (existing state is dropped). The default is the whole
 * parameter. */
m2_status m2_optim_set_range(m2_optim *o, int i, int64_t lo, int64_t hi);
/* The range of parameter i ([0, numel) unless set). */
void m2_optim_range(const m2_optim *o, int i, int64_t *lo, int64_t *hi);

/* State for checkpoints: state tensor j of parameter i (borrowed; NULL if none yet, e.g.
 * before the first step) and its short name ("exp_avg", "exp_avg_sq", "momentum").
 * m2_optim_state_count gives how many state tensors each parameter has. */
int m2_optim_state_count(const m2_optim *o);
const char *m2_optim_state_name(const m2_optim *o, int j);
m2_tensor *m2_optim_state(m2_optim *o, int i, int j);
/* Create (zeroed) state tensors for every parameter now, so a checkpoint can be restored into them. */
m2_status m2_optim_init_state(m2_optim *o);

/* Global L2 norm of all grads (computed in double, fixed order: deterministic); when
 * max_norm > 0 and the norm exceeds it, scales every grad by max_norm / (norm + 1e-6).
 * A NaN/inf norm is reported through *norm and grads are left untouched. */
m2_status m2_clip_grad_norm(m2_tensor *const *params, int n, double max_norm, double *norm);

/* Learning-rate schedules. step counts from 0. */
typedef enum m2_sched_kind {
  M2_SCHED_CONSTANT,  /* lr (after linear warmup) */
  M2_SCHED_COSINE,    /* linear warmup to lr over `warmup`, cosine to min_lr over `decay` steps, then min_lr */
  M2_SCHED_WSD,       /* warmup, stable at lr for `stable` steps, then linear decay to min_lr over `decay` */
} m2_sched_kind;

typedef struct m2_schedule {
  m2_sched_kind kind;
  double lr, min_lr;
  int64_t warmup, stable, decay;
} m2_schedule;

double m2_schedule_lr(const m2_schedule *s, int64_t step);

#ifdef __cplusplus
}
#endif
#endif
