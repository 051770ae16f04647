-- Every request a never-seen deployment id: cold-<thread>-<counter>. The DNS fixture resolves every cold-* name.
local prefix = ""
local counter = 0

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  prefix = string.format("cold-%08x", math.random(0, 2147483647))
end

function request()
  counter = counter + 1
  return wrk.format("GET", "/services/" .. prefix .. "-" .. counter .. "/")
end
