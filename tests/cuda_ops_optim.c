/* cuda_ops_optim.c — the CUDA optimizer kernels against the CPU ones through m2_optim_step: AdamW (weight
 * decay, a no_decay parameter) and SGD (momentum, nesterov) over several steps on f32 parameters, and
 * m2_clip_grad_norm over CUDA grads (f32 and bf16) against the same grads on the host. f64 parameters
 * on cuda are refused. Skips (77) without a GPU. */
#include "cuda_parity.h"

#define NP 3
static const int64_t shapes[NP][2] = {{37, 29}, {1000, 3}, {5, 1}};

/* the same parameters on both devices, with fixed grads (set directly, as a backward would) */
static void make_params(m2_tensor **hp, m2_tensor **gp, uint64_t seed) {
  for (int i = 0; i < NP; i++) {
    m2_rng r = m2_rng_make(seed, (uint64_t)i);
    m2_tensor *p = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, shapes[i]);
    hp[i] = m2_clone_raw(p, M2_F32, M2_DEV_CPU);
    gp[i] = m2_clone_raw(p, M2_F32, par_gpu);
    m2_requires_grad_(hp[i], true);
    m2_requires_grad_(gp[i], true);
    m2_release(p);
  }
}
static void set_grads(m2_tensor **hp, m2_tensor **gp, uint64_t seed) {
  for (int i = 0; i < NP; i++) {
    m2_rng r = m2_rng_make(seed, 100 + (uint64_t)i);
    m2_tensor *g = m2_randn(&r, M2_F32, M2_DEV_CPU, 2, shapes[i]);
    m2_release(hp[i]->grad);
    m2_release(gp[i]->grad);
    hp[i]->grad = m2_clone_raw(g, M2_F32, M2_DEV_CPU);
    gp[i]->grad = m2_clone_raw(g, M2_F32, par_gpu);
    m2_release(g);
  }
}

static void run_optim(const char *name, m2_optim *ho, m2_optim *go) {
  m2_tensor *hp[NP], *gp[NP];
  make_params(hp, gp, 77);
  for (int i = 0; i < NP; i++) {
    CHECK_OK(m2_optim_add(ho, hp[i], NULL, i == 2));
    CHECK_OK(m2_optim_add(go, gp[i], NULL, i == 2));
  }
  double worst = 0;
  for (int step = 0; step < 5; step++) {
    set_grads(hp, gp, 1000 + (uint64_t)step);
    CHECK_OK(m2_optim_step(ho, 1e-2));
    CHECK_OK(m2_optim_step(go, 1e-2));
  }
  for (int i = 0; i < NP; i++) {
    double e = max_rel_diff(gp[i], hp[i]);
    CHECK(e <= 1e-5, "%s: parameter %d differs by %.3g", name, i, e);
    if (e > worst) worst = e;
    for (int j = 0; j < m2_optim_state_count(ho); j++) {
      double es = max_rel_diff(m2_optim_state(go, i, j), m2_optim_state(ho, i, j));
      CHECK(es <= 1e-5, "%s: state %d of parameter %d differs by %.3g", name, j, i, es);
      if (es > worst) worst = es;
    }
  }
  printf("  %-28s worst %.2e\n", name, worst);
  m2_optim_free(ho);
  m2_optim_free(go);
  for (int i = 0; i < NP; i++) { m2_release(hp[i]); m2_release(gp[i]); }
}

int main(void) {
  PAR_SKIP_WITHOUT_GPU("cuda_ops_optim");
  m2_adamw_opts ao = {0.9, 0.95, 1e-8, 0.1};
  run_optim("adamw", m2_adamw_new(&ao), m2_adamw_new(&ao));
  m2_sgd_opts so = {0.9, 0.01, false}, sn = {0.8, 0.0, true}, sp = {0};
  run_optim("sgd momentum", m2_sgd_new(&so), m2_sgd_new(&so));
  run_optim("sgd nesterov", m2_sgd_new(&sn), m2_sgd_new(&sn));
  run_optim("sgd plain", m2_sgd_new(&sp), m2_sgd_new(&sp));

  /* grad-norm clipping: f32 grads on the device, then bf16 grads */
  m2_tensor *hp[NP], *gp[NP];
  make_params(hp, gp, 5);
  set_grads(hp, gp, 6);
  double hn = 0, gn = 0;
  CHECK_OK(m2_clip_grad_norm(hp, NP, 1.0, &hn));
  CHECK_OK(m2_clip_grad_norm(gp, NP, 1.0, &gn));
  CHECK_CLOSE(gn, hn, 0, 1e-9, "grad norm (f32 grads)");
  for (int i = 0; i < NP; i++) CHECK(max_rel_diff(gp[i]->grad, hp[i]->grad) <= 1e-6, "clipped grad %d differs", i);
  for (int i = 0; i < NP; i++) {
    m2_tensor *b = m2_clone_raw(gp[i]->grad, M2_BF16, par_gpu), *hb = m2_clone_raw(b, M2_F32, M2_DEV_CPU);
    m2_release(gp[i]->grad);
    m2_release(hp[i]->grad);
    gp[i]->grad = b;
    hp[i]->grad = hb;
  }
  CHECK_OK(m2_clip_grad_norm(hp, NP, 0.5, &hn));
  CHECK_OK(m2_clip_grad_norm(gp, NP, 0.5, &gn));
  CHECK_CLOSE(gn, hn, 0, 1e-9, "grad norm (bf16 grads)");
  for (int i = 0; i < NP; i++) CHECK(max_rel_diff(gp[i]->grad, hp[i]->grad) <= 1e-2, "clipped bf16 grad %d differs", i);
  /* a norm under the limit leaves grads alone */
  CHECK_OK(m2_clip_grad_norm(gp, NP, 1e9, &gn));
  CHECK_CLOSE(gn, 0.5, 0, 1e-2, "norm after clipping to 0.5");
  for (int i = 0; i < NP; i++) { m2_release(hp[i]); m2_release(gp[i]); }

  /* f64 parameters on cuda are refused before anything changes */
  int64_t s1[1] = {4};
  m2_tensor *p64 = m2_zeros(M2_F64, par_gpu, 1, s1);
  m2_requires_grad_(p64, true);
  p64->grad = m2_zeros(M2_F64, par_gpu, 1, s1);
  m2_optim *o = m2_adamw_new(NULL);
  CHECK_OK(m2_optim_add(o, p64, "p64", false));
  CHECK_FAILS(m2_optim_step(o, 1e-3) != M2_OK, M2_ERR_DTYPE, "f32");
  m2_optim_free(o);
  m2_release(p64);
  return par_finish("cuda_ops_optim");
}
