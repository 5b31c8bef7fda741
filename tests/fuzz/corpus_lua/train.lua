local cfg = m2.config { lr = 1e-2, steps = 3 }
local model = m2.models.lm { vocab = 6, d = 8, layers = "MA", m2rnn = { heads = 2, k = 2, v = 4 },
                             attention = { heads = 2 }, mlp = { kind = "swiglu", hidden = 16 } }
local data = m2.data.state_tracking { group = "S3", length = 4, batch = 2, seed = 0 }
m2.train { model = model, data = data, steps = cfg.steps, optim = { kind = "adamw", lr = cfg.lr },
           checkpoint_every = 1, out = "run.h5", quiet = true }
local info = m2.runs.info("run.h5")
local r = m2.runs.open("run.h5")
print(info.latest, r:ckpt_list()[1], r:read_series("metrics", "loss"))
r:close()
print(model:generate({1, 2}, { max_tokens = 4, temperature = 0.8, top_p = 0.9, seed = 1 }))
m2.safetensors.save("w.safetensors", model)
m2.safetensors.load_into(model, "w.safetensors")
