/* ops_matmul.cu — matmul on cuBLAS (cublasGemmStridedBatchedEx): f32 or bf16 storage, fp32 accumulation
 * (CUBLAS_COMPUTE_32F: bf16 runs on tensor cores; f32 is full fp32, no TF32). Same geometry as
 * core/ops_matmul.c: a (..., M, K) [(..., K, M) if ta], b (..., K, N) [(..., N, K) if tb] -> (..., M, N),
 * batch dims equal or b 2-D and shared; a shared b with !ta is one (batch*M, K) GEMM. */
#include "ops.h"
#include <cublas_v2.h>
#include <limits.h>
#include <string.h>
#include "ops_common.cuh"
#include "../core/ops_matmul.h"

#define M2_CUBLAS_TRY(call)                                                                              \
  do {                                                                                                   \
    cublasStatus_t m2_b_ = (call);                                                                       \
    if (m2_b_ != CUBLAS_STATUS_SUCCESS)                                                                  \
      return m2_fail(M2_ERR_CUDA, "%s failed: %s (%s:%d)", #call, cublasGetStatusString(m2_b_), __FILE__, __LINE__); \
  } while (0)

#define MAX_GPUS 16
static cublasHandle_t g_handle[MAX_GPUS];

/* The cuBLAS handle of a device, bound to its stream. */
static m2_status handle_for(m2_device dev, cublasHandle_t *h) {
  if (dev.index < 0 || dev.index >= MAX_GPUS) return m2_fail(M2_ERR_DEVICE, "cuda:%d: no cuBLAS handle slot", dev.index);
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  M2_CUDA_TRY(cudaSetDevice(dev.index));
  if (!g_handle[dev.index]) M2_CUBLAS_TRY(cublasCreate(&g_handle[dev.index]));
  M2_CUBLAS_TRY(cublasSetStream(g_handle[dev.index], st));
  *h = g_handle[dev.index];
  return M2_OK;
}

/* Row-major C (rows, cols) = beta C + opX(X) (rows, inner) opY(Y) (inner, cols), for `batch` matrices at
 * element strides sx, sy, sc (0 = the same matrix for every batch). Stored layouts: X (inner, rows) if tx
 * else (rows, inner); Y (cols, inner) if ty else (inner, cols). With sc == 0 the products are summed into
 * one C (beta applies to the first). cuBLAS is column-major: it computes C^T = opY(Y)^T opX(X)^T.
 * X and Y are of dtype dt, C too; with xbf16, X and Y are bf16 and C f32 (an f32 matmul's bf16 products). */
static m2_status bgemm(m2_device dev, m2_dtype dt, bool tx, bool ty, int64_t batch, int64_t rows, int64_t cols,
                       int64_t inner, const void *X, int64_t sx, const void *Y, int64_t sy, float beta, void *C,
                       int64_t sc, bool xbf16 = false) {
  if (xbf16) dt = M2_BF16;
  size_t es = m2_dtype_size(dt), esc = xbf16 ? 4 : es; /* operand and result element sizes */
  if (rows == 0 || cols == 0) return M2_OK;
  cudaStream_t st;
  M2_TRY(cu_stream(dev, &st));
  if (inner == 0 || batch == 0) { /* empty products: C = beta C (beta is 0 or 1) */
    if (beta == 0) {
      int64_t nc = sc == 0 ? 1 : batch;
      M2_CUDA_TRY(cudaMemsetAsync(C, 0, (size_t)(nc * rows * cols) * esc, st));
    }
    return M2_OK;
  }
  cublasHandle_t h = NULL;
  M2_TRY(handle_for(dev, &h));
  cudaDataType_t ct = dt == M2_BF16 ? CUDA_R_16BF : CUDA_R_32F, cc = xbf16 ? CUDA_R_32F : ct;
  int m = (int)cols, n = (int)rows, k = (int)inner;
  int lda = ty ? k : m, ldb = tx ? n : k, ldc = m;
  cublasOperation_t opa = ty ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tx ? CUBLAS_OP_T : CUBLAS_OP_N;
  float one = 1.0f;
  if (sc != 0 || batch == 1) {
    M2_CUBLAS_TRY(cublasGemmStridedBatchedEx(h, opa, opb, m, n, k, &one, Y, ct, lda, (long long)sy, X, ct, ldb,
                                             (long long)sx, &beta, C, cc, ldc, (long long)sc, (int)batch,
                                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return M2_OK;
  }
  for (int64_t i = 0; i < batch; i++) { /* summed over the batch into one C */
    float bi = i > 0 ? 1.0f : beta;
    M2_CUBLAS_TRY(cublasGemmEx(h, opa, opb, m, n, k, &one, (const char *)Y + (size_t)(i * sy) * es, ct, lda,
                               (const char *)X + (size_t)(i * sx) * es, ct, ldb, &bi, C, cc, ldc, CUBLAS_COMPUTE_32F,
                               CUBLAS_GEMM_DEFAULT));
  }
  return M2_OK;
}

extern "C" m2_status m2_cuda_matmul_fwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  mm_geom g;
  M2_TRY(m2_matmul_setup(c, cu_check_float, &g)); /* checks and out[0]: core/ops_matmul.c, the CPU's words */
  m2_tensor *o = c->out[0];
  const bool x16 = M2_ATTR(c, m2_matmul_attr)->bf16; /* bf16 products of f32 tensors (m2_set_matmul_precision) */
  m2_tensor *a16 = x16 ? cu_as(a, M2_BF16) : NULL, *b16 = x16 && a16 ? cu_as(b, M2_BF16) : NULL;
  if (x16 && !b16) {
    m2_release(a16);
    return m2_errcode();
  }
  const void *pa = m2_data(x16 ? a16 : a), *pb = m2_data(x16 ? b16 : b);
  void *po = m2_data(o);
  m2_status s;
  if (g.shared && !g.ta) /* (batch*M, K) @ op(b) in one GEMM */
    s = bgemm(a->device, a->dtype, false, g.tb, 1, g.batch * g.M, g.N, g.K, pa, 0, pb, 0, 0.0f, po, 0, x16);
  else
    s = bgemm(a->device, a->dtype, g.ta, g.tb, g.batch, g.M, g.N, g.K, pa, g.M * g.K, pb, g.shared ? 0 : g.K * g.N,
              0.0f, po, g.M * g.N, x16);
  m2_release(a16); /* stream-ordered pool: the memory is reused only after the GEMM */
  m2_release(b16);
  return s;
}

extern "C" m2_status m2_cuda_matmul_bwd(m2_opcall *c) {
  m2_tensor *a = c->in[0], *b = c->in[1];
  const m2_matmul_attr *at = M2_ATTR(c, m2_matmul_attr);
  mm_geom g;
  M2_TRY(m2_matmul_check(a, b, at->ta, at->tb, cu_check_float, &g));
  const bool x16 = at->bf16; /* bf16 products of f32 tensors: every operand rounded to bf16 */
  m2_tensor *dcc = cu_as(c->dout[0], x16 ? M2_BF16 : a->dtype); /* (..., M, N) */
  if (!dcc) return m2_errcode();
  m2_tensor *a16 = x16 ? cu_as(a, M2_BF16) : NULL, *b16 = x16 && a16 ? cu_as(b, M2_BF16) : NULL;
  if (x16 && !b16) {
    m2_release(dcc);
    m2_release(a16);
    return m2_errcode();
  }
  m2_dtype dt = a->dtype;
  m2_device dev = a->device;
  const void *pa = m2_data(x16 ? a16 : a), *pb = m2_data(x16 ? b16 : b), *pc = m2_data(dcc);
  int64_t MN = g.M * g.N, MK = g.M * g.K, sb = g.shared ? 0 : g.K * g.N;
  m2_status s = M2_OK;
  if (c->needs_din[0]) {
    m2_tensor *da = m2_empty(dt, dev, a->ndim, a->shape);
    if (!da) s = m2_errcode();
    else {
      c->din[0] = da;
      void *pd = m2_data(da);
      if (!g.ta) { /* da (M, K) = dc (M, N) op(b)^T (N, K) */
        if (g.shared) s = bgemm(dev, dt, false, !g.tb, 1, g.batch * g.M, g.K, g.N, pc, 0, pb, 0, 0.0f, pd, 0, x16);
        else s = bgemm(dev, dt, false, !g.tb, g.batch, g.M, g.K, g.N, pc, MN, pb, sb, 0.0f, pd, MK, x16);
      } else { /* da (K, M) = op(b) (K, N) dc^T (N, M) */
        s = bgemm(dev, dt, g.tb, true, g.batch, g.K, g.M, g.N, pb, sb, pc, MN, 0.0f, pd, MK, x16);
      }
    }
  }
  if (s == M2_OK && c->needs_din[1]) {
    m2_tensor *db = m2_empty(dt, dev, b->ndim, b->shape);
    if (!db) s = m2_errcode();
    else {
      c->din[1] = db;
      void *pd = m2_data(db);
      int64_t sd = g.shared ? 0 : g.K * g.N; /* 0: summed over the batch */
      if (!g.tb) { /* db (K, N) = op(a)^T (K, M) dc (M, N) */
        if (g.shared && !g.ta) s = bgemm(dev, dt, true, false, 1, g.K, g.N, g.batch * g.M, pa, 0, pc, 0, 0.0f, pd, 0, x16);
        else s = bgemm(dev, dt, !g.ta, false, g.batch, g.K, g.N, g.M, pa, MK, pc, MN, 0.0f, pd, sd, x16);
      } else { /* db (N, K) = dc^T (N, M) op(a) (M, K) */
        if (g.shared && !g.ta) s = bgemm(dev, dt, true, false, 1, g.N, g.K, g.batch * g.M, pc, 0, pa, 0, 0.0f, pd, 0, x16);
        else s = bgemm(dev, dt, true, g.ta, g.batch, g.N, g.K, g.M, pc, MN, pa, MK, 0.0f, pd, sd, x16);
      }
    }
  }
  m2_release(dcc);
  m2_release(a16);
  m2_release(b16);
  return s;
}

/* ---- registration: this file's kernels in core's op registry (called by m2_cuda_register) ---- */
extern "C" m2_status m2_cuda_register_ops_matmul(void) {
  static const m2_kernel_reg regs[] = {
      {&m2_op_matmul, m2_cuda_matmul_fwd, m2_cuda_matmul_bwd},
  };
  return m2_op_register_kernels(M2_CUDA, regs, (int)(sizeof regs / sizeof regs[0]));
}
