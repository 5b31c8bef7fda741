/* bind_module.c — luaopen_m2_core: the "m2.core" module, one table filled by every binding area in turn. The top
 * of the binding: it calls each area's m2lua_open_<area>, and the areas call only bind_core.c and bind_tensor.c. */
#include "bind.h"

int luaopen_m2_core(lua_State *L) {
  lua_newtable(L);
  m2lua_open_core(L);
  m2lua_open_tensor(L);
  m2lua_open_ops(L);
  m2lua_open_autograd(L);
  m2lua_open_optim(L);
  m2lua_open_sample(L);
  m2lua_open_recompute(L);
  if (m2lua_open_data) m2lua_open_data(L);
  if (m2lua_open_runfile) m2lua_open_runfile(L);
  if (m2lua_open_sys) m2lua_open_sys(L);
  if (m2lua_open_binfile) m2lua_open_binfile(L);
  if (m2lua_open_dist) m2lua_open_dist(L);
  return 1;
}
