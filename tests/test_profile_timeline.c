/* test_profile_timeline.c — the profiler's timeline mode on the CPU (tests/profile_timeline_check.h): no device
 * marks there, so the host clock stands in for both columns and the totals telescope exactly. */
#define _POSIX_C_SOURCE 200809L
#include "profile_timeline_check.h"

int main(void) {
  timeline_checks(M2_DEV_CPU);
  return check_finish("test_profile_timeline");
}
