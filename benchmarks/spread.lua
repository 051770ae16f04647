-- Spread requests over dep-0 .. dep-(N-1), N from the first script argument (default 200).
local deployments = 200
local counter = 0

function init(args)
  if args[1] then deployments = tonumber(args[1]) end
  counter = math.random(0, deployments - 1)
end

function request()
  counter = (counter + 1) % deployments
  return wrk.format("GET", "/services/dep-" .. counter .. "/")
end
