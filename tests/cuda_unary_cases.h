/* cuda_unary_cases.h — the unary maps as parity cases (cuda_parity.h's par_case function f_un, ud = a pointer to the
 * kind), shared by cuda_ops_elementwise.c (the default kernels) and cuda_ops_membound_vec.c (the vectorized ones).
 * Each kind is one op with fixed scalar arguments; un_names[k] names kind k. Include after cuda_parity.h. */
#ifndef M2_TEST_CUDA_UNARY_CASES_H
#define M2_TEST_CUDA_UNARY_CASES_H

enum { NEG, SCALE, ADDS, EXP, LOG, TANH, SIG, SILU, SOFTPLUS, RELU, SQUARE, SQRT, CLAMP, NKINDS };
static const char *un_names[] = {"neg", "scale", "add_scalar", "exp", "log", "tanh", "sigmoid", "silu", "softplus",
                                 "relu", "square", "sqrt", "clamp"};
static int f_un(m2_tensor *const *in, void *ud, m2_tensor **outs) {
  m2_tensor *x = in[0];
  switch (*(int *)ud) {
    case NEG: PAR_ONE(m2_neg(x));
    case SCALE: PAR_ONE(m2_scale(x, -1.75));
    case ADDS: PAR_ONE(m2_add_scalar(x, 0.625));
    case EXP: PAR_ONE(m2_exp(x));
    case LOG: PAR_ONE(m2_log(x));
    case TANH: PAR_ONE(m2_tanh(x));
    case SIG: PAR_ONE(m2_sigmoid(x));
    case SILU: PAR_ONE(m2_silu(x));
    case SOFTPLUS: PAR_ONE(m2_softplus(x));
    case RELU: PAR_ONE(m2_relu(x));
    case SQUARE: PAR_ONE(m2_square(x));
    case SQRT: PAR_ONE(m2_sqrt(x));
    default: PAR_ONE(m2_clamp(x, -0.5, 0.75));
  }
}
#endif
