/* m2.h — the whole public C API of the m2lab core. */
#ifndef M2_H
#define M2_H
#include "status.h"
#include "dtype.h"
#include "backend.h"
#include "tensor.h"
#include "op.h"
#include "ops.h"
#include "autograd.h"
#include "recompute.h"
#include "rng.h"
#include "sample.h"
#include "gradcheck.h"
#include "ops_mixers.h"
#include "optim.h"
#include "dist.h"
#include "dist_dp.h"
#include "runfile/runfile.h"
#include "profile.h"
#endif
