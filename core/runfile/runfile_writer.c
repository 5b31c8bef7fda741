/* runfile_writer.c — the writer's two states (runfile.h): the switches between APPEND (SWMR write) and EXCLUSIVE,
 * the root attributes that wait for an EXCLUSIVE moment, the journaled flushes outside SWMR mode, fsync, and
 * m2_run_flush. Below the metric, checkpoint and open/close code, which all switch states through it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "runfile_int.h"

/* ---------------- checks, fsync, journaled flushes ---------------- */

m2_status m2_rf_check_open(m2_run *r, bool need_writer, const char *what) {
  if (!r) return m2_fail(M2_ERR_VALUE, "%s: run is NULL", what);
  if (r->broken || r->file < 0)
    return m2_fail(M2_ERR_IO, "%s: %s: the file was closed after an earlier error; reopen it with M2_RUN_RESUME",
                   r->path, what);
  if (need_writer && !r->writer) return m2_fail(M2_ERR_VALUE, "%s: %s: the run is open read-only", r->path, what);
  int io = r->writer ? m2_rf_vfd_error(r->file) : 0;
  if (io)
    return m2_fail(M2_ERR_IO, "%s: %s: an earlier write failed (%s): the file keeps what its last complete flush "
                   "wrote; close it, and resume the run once the cause is gone", r->path, what, strerror(io));
  return M2_OK;
}

m2_status m2_rf_fsync(m2_run *r) {
  if (r->no_fsync || r->lock_fd < 0) return M2_OK;
  if (fsync(r->lock_fd) != 0) return m2_fail(M2_ERR_IO, "%s: fsync: %s", r->path, strerror(errno));
  return M2_OK;
}

volatile int *m2_rf_flush_window;

herr_t m2_rf_h5flush(hid_t file) {
  if (m2_rf_flush_window) *m2_rf_flush_window = 1;
  m2_rf_journal_begin(file);
  herr_t e = m2_rf_vfd_error(file) ? -1 : H5Fflush(file, H5F_SCOPE_GLOBAL);
  if (m2_rf_journal_commit(file) < 0) e = -1;
  if (m2_rf_flush_window) *m2_rf_flush_window = 0;
  return e;
}

herr_t m2_rf_h5start_swmr(hid_t file) {
  if (m2_rf_flush_window) *m2_rf_flush_window = 1;
  m2_rf_journal_begin(file);
  herr_t e = m2_rf_vfd_error(file) ? -1 : H5Fstart_swmr_write(file);
  if (m2_rf_journal_commit(file) < 0) e = -1;
  if (m2_rf_flush_window) *m2_rf_flush_window = 0;
  return e;
}

herr_t m2_rf_h5close(hid_t file, bool swmr) {
  m2_rf_close_failed = 0;
  if (!swmr) {
    if (m2_rf_flush_window) *m2_rf_flush_window = 1;
    m2_rf_journal_begin(file); /* committed by the driver's close */
  }
  herr_t e = H5Fclose(file);
  if (m2_rf_flush_window) *m2_rf_flush_window = 0;
  if (m2_rf_close_failed) {
    m2_rf_io_errno = m2_rf_close_failed;
    e = -1;
  }
  return e;
}

/* ---------------- writer states ---------------- */

m2_status m2_rf_write_pending_attrs(m2_run *r) {
  m2_status st = M2_OK;
  for (int i = 0; i < r->npending; i++) {
    m2_status s = m2_h5_attr_write(r->file, r->pending[i].key, r->pending[i].v, r->path, "/");
    if (s != M2_OK) return s;
  }
  for (int i = 0; i < r->npending; i++) {
    free(r->pending[i].key);
    m2_value_free(&r->pending[i].v);
  }
  r->npending = 0;
  return st;
}

m2_status m2_rf_to_exclusive(m2_run *r) {
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/";
  if (!r->swmr) return M2_OK;
  m2_rf_series_close_ids(r);
  hid_t f = r->file;
  r->file = -1;
  r->swmr = false;
  H5CHK(m2_rf_h5close(f, true)); /* (SWMR: nothing to journal) */
  H5CHK(r->file = H5Fopen(r->path, H5F_ACC_RDWR, r->fapl));
  m2_rf_vfd_set_sync(r->file, !r->no_fsync);
  return M2_OK;
fail:
  r->broken = true;
  return st;
}

m2_status m2_rf_to_append(m2_run *r) {
  m2_status st = M2_OK;
  const char *h5file = r->path, *h5obj = "/";
  if (r->swmr) return M2_OK;
  RF_TRY(m2_rf_write_pending_attrs(r));
  RF_TRY(m2_rf_series_write_all(r));
  H5CHK(m2_rf_h5start_swmr(r->file)); /* flushes everything first */
  r->swmr = true;
  r->last_flush = m2_rf_monotonic();
  return M2_OK;
fail:
  return st;
}

/* ---------------- the public flush ---------------- */

m2_status m2_run_flush(m2_run *r) {
  if (r && !r->writer) return M2_OK;
  M2_TRY(m2_rf_check_open(r, true, "flush"));
  if (r->in_ckpt) return m2_rf_series_write_all(r); /* EXCLUSIVE; the commit flushes */
  if (r->swmr && (m2_rf_series_need_exclusive(r) || r->npending > 0)) M2_TRY(m2_rf_to_exclusive(r));
  if (!r->swmr) M2_TRY(m2_rf_to_append(r));
  else M2_TRY(m2_rf_series_write_all(r));
  r->last_flush = m2_rf_monotonic();
  return M2_OK;
}
