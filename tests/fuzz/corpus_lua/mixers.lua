local B, T, N, K, V = 1, 5, 2, 3, 2
local q = m2.randn(B, T, N, K, {requires_grad = true})
local y, hT = m2.m2rnn(q, m2.randn(B, T, N, K), m2.randn(B, T, N, V), m2.randn(N, V, V), m2.rand(B, T, N), nil,
  {grad_clip = 1, ckpt_every = 8})
y:sum_all():backward()
local o = m2.attention(m2.randn(1, 3, 2, 4), m2.randn(1, 3, 2, 4), m2.randn(1, 3, 2, 4), {causal = true})
local g = m2.gdn_chunked(m2.randn(1, 7, 1, 2):l2norm(), m2.randn(1, 7, 1, 2):l2norm(), m2.randn(1, 7, 1, 3),
  -m2.rand(1, 7, 1), m2.rand(1, 7, 1), nil, {chunk = 3})
local s = m2.ssd_chunked(m2.randn(1, 5, 2, 2), m2.rand(1, 5, 2), -m2.rand(2), m2.randn(1, 5, 1, 3),
  m2.randn(1, 5, 1, 3), nil, {chunk = 2})
print(m2.conv1d_causal(m2.randn(2, 4, 3), m2.randn(3, 2)):shape(), q.grad:shape(), o:shape(), g:shape(), s:shape())
