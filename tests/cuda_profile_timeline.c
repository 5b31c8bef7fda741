/* cuda_profile_timeline.c — the profiler's timeline mode on a GPU (tests/profile_timeline_check.h): the CUDA
 * backend's marks (events on the device's stream, core/backend.h mark / mark_ms) give each op call's span on the
 * stream and the gaps between them; spans > 0, gaps >= 0 (and >= 15 ms across a 20 ms host sleep), window = spans
 * + gaps, the pool's flushes, nesting, reset. Skips (77) without a GPU. */
#define _POSIX_C_SOURCE 200809L
#include "profile_timeline_check.h"
#include "cuda_init.h"

int main(void) {
  if (m2test_cuda_devices() < 1) {
    printf("cuda_profile_timeline: no CUDA device, skipped\n");
    return 77;
  }
  timeline_checks((m2_device){M2_CUDA, 0});
  return check_finish("cuda_profile_timeline");
}
