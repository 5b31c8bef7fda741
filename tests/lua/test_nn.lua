-- test_nn.lua — m2.nn modules: parameter trees and names, order, no_decay flags, init,
-- train/eval, dtype conversion, state dicts, printing, and the forward maths of each layer.
local m2 = require "m2"
local nn = m2.nn
local T = m2.test

m2.seed(11)

-- a small model with a list of blocks, like the LM builders will make
local Block = nn.class("Block")
function Block:__init(d)
  self.norm = nn.RMSNorm(d)
  self.mlp = nn.SwiGLU(d, 2 * d)
end
function Block:forward(x) return x + self.mlp(self.norm(x)) end

local Model = nn.class("Model")
function Model:__init(V, d, L)
  self.embed = nn.Embedding(V, d)
  self.blocks = {}
  for i = 1, L do self.blocks[i] = Block(d) end
  self.norm = nn.RMSNorm(d)
  self.head = nn.Linear(d, V, { bias = false })
end
function Model:forward(ids)
  local x = self.embed(ids)
  for _, b in ipairs(self.blocks) do x = b(x) end
  return self.head(self.norm(x))
end

T.case("parameter names, order and flags", function()
  local model = Model(10, 4, 2)
  local names, flags = {}, {}
  for _, p in ipairs(model:parameters()) do
    names[#names + 1] = p.name
    flags[p.name] = p.no_decay
    T.eq(p.tensor:dtype(), "f32")
    T.ok(p.tensor:requires_grad() and p.tensor:is_leaf(), p.name .. " is a leaf that requires grad")
  end
  T.eq(names, {
    "embed.weight",
    "blocks.1.norm.weight", "blocks.1.mlp.gate.weight", "blocks.1.mlp.up.weight", "blocks.1.mlp.down.weight",
    "blocks.2.norm.weight", "blocks.2.mlp.gate.weight", "blocks.2.mlp.up.weight", "blocks.2.mlp.down.weight",
    "norm.weight", "head.weight",
  })
  T.eq(flags["blocks.1.norm.weight"], true)
  T.eq(flags["norm.weight"], true)
  T.eq(flags["head.weight"], false)
  T.eq(flags["embed.weight"], false)
  -- named_parameters iterates in the same order
  local i = 0
  for name, t in model:named_parameters() do
    i = i + 1
    T.eq(name, names[i])
    T.ok(m2.is_tensor(t))
  end
  T.eq(i, #names)
  T.eq(model:num_parameters(), 10 * 4 + 2 * (4 + 3 * 4 * 8) + 4 + 4 * 10)
  -- modules() walks the tree depth-first with paths
  local paths = {}
  for path in model:modules() do paths[#paths + 1] = path end
  T.eq(paths[1], "")
  T.eq(paths[3], "blocks.1")
  T.eq(paths[5], "blocks.1.mlp")
  -- a shared module appears once
  local lin = nn.Linear(2, 2)
  local seq = nn.Sequential(lin, nn.ReLU(), lin)
  T.eq(#seq:parameters(), 2)
  T.eq(seq:parameters()[1].name, "1.weight")
end)

T.case("initialisation", function()
  m2.seed(3)
  local lin = nn.Linear(200, 300)
  local w = lin.weight:double()
  T.close(w:mean():item(), 0, 0.001)
  T.close(((w * w):mean():item()) ^ 0.5, 0.02, 0.001)
  T.eq(lin.bias:totable()[1], 0)
  T.eq(nn.RMSNorm(3).weight:totable(), { 1, 1, 1 })
  T.close(((nn.Linear(100, 100, { init_std = 0.5 }).weight:double() ^ 2):mean():item()) ^ 0.5, 0.5, 0.02)
  -- the same seed gives the same model
  m2.seed(9)
  local a = Model(7, 4, 1)
  m2.seed(9)
  local b = Model(7, 4, 1)
  T.eq(a.head.weight:totable(), b.head.weight:totable())
end)

T.case("forward maths of the layers", function()
  local lin = nn.Linear(3, 2)
  lin.bias:copy_(m2.tensor { 1, -1 })
  local x = m2.randn(4, 3)
  T.close(lin(x):totable(), (m2.matmul(x, lin.weight, false, true) + lin.bias):totable(), 1e-6)
  local emb = nn.Embedding(5, 2)
  T.eq(emb(m2.tensor({ 3 }, { dtype = "i64" })):totable(), { emb.weight[4]:totable() })
  local norm = nn.RMSNorm(3, { eps = 1e-6 })
  norm.weight:copy_(m2.tensor { 1, 2, 3 })
  local v = m2.tensor { { 1, 2, 2 } }
  local r = 1 / math.sqrt(3 + 1e-6)
  T.close(norm(v):totable(), { { r, 4 * r, 6 * r } }, 1e-5)
  local sw = nn.SwiGLU(3, 5)
  local ref = sw.down(m2.silu(sw.gate(x)) * sw.up(x))
  T.close(sw(x):totable(), ref:totable(), 1e-6)
  T.eq(sw(x):shape(), { 4, 3 })
  local seq = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
  T.close(seq(x):totable(), seq[3](seq[1](x):tanh()):totable(), 1e-6)
  T.eq(nn.Identity()(x), x)
  local model = Model(10, 4, 2)
  local ids = m2.randint(10, 2, 5)
  T.eq(model(ids):shape(), { 2, 5, 10 })
end)

T.case("train / eval, zero_grad, dtype conversion", function()
  local model = Model(6, 4, 1)
  T.eq(model.training, true)
  model:eval()
  T.eq(model.blocks[1].mlp.up.training, false)
  model:train()
  T.eq(model.blocks[1].mlp.up.training, true)
  local ids = m2.randint(6, 3)
  model(ids):sum():backward()
  T.ok(model.head.weight.grad ~= nil)
  model:zero_grad()
  T.eq(model.head.weight.grad, nil)
  model:double()
  for _, p in ipairs(model:parameters()) do
    T.eq(p.tensor:dtype(), "f64", p.name)
    T.ok(p.tensor:requires_grad() and p.tensor:is_leaf(), p.name)
  end
  T.eq(model(ids):dtype(), "f64")
  model:float()
  T.eq(model.head.weight:dtype(), "f32")
end)

T.case("state dicts", function()
  m2.seed(1)
  local a = Model(8, 4, 2)
  m2.seed(2)
  local b = Model(8, 4, 2)
  local ids = m2.randint(8, 6)
  T.ok(a(ids):sub(b(ids)):square():sum():item() > 0, "different inits differ")
  b:load_state_dict(a:state_dict())
  T.close(b(ids):totable(), a(ids):totable(), 0)
  local sd = a:state_dict()
  sd["head.weight"] = m2.zeros(3, 3)
  T.raises(function() b:load_state_dict(sd) end, "'head.weight' has shape (8, 4), the state dict has (3, 3)")
  sd = a:state_dict()
  sd["extra.weight"] = m2.zeros(1)
  T.raises(function() b:load_state_dict(sd) end, "unexpected parameter 'extra.weight'")
  b:load_state_dict(sd, { strict = false })
  sd = a:state_dict()
  sd["norm.weight"] = nil
  T.raises(function() b:load_state_dict(sd) end, "missing parameter 'norm.weight'")
end)

T.case("printing and class errors", function()
  local s = tostring(Model(5, 4, 1))
  T.ok(s:find("Model(", 1, true) == 1, s)
  T.ok(s:find("(embed): Embedding(5, 4)", 1, true) ~= nil, s)
  T.ok(s:find("(blocks.1): Block(", 1, true) ~= nil, s)
  T.ok(s:find("(head): Linear(4 -> 5)", 1, true) ~= nil, s)
  T.eq(tostring(nn.Linear(2, 3)), "Linear(2 -> 3, bias)")
  local Empty = nn.class("Empty")
  T.raises(function() Empty()(m2.zeros(1)) end, "Empty has no forward method")
  T.raises(function() nn.Sequential(nn.ReLU(), 3) end, "entry 2 is not a module")
  T.raises(function() nn.Embedding(0, 3) end, "num_embeddings must be a positive integer")
  T.raises(function() nn.RMSNorm(4):param("w", {}) end, "expected a tensor")
end)
