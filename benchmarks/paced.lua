-- The soak's load: requests spread over dep-0 .. dep-199 like spread.lua, each connection pausing 10 ms
-- between requests, so the rate stays near connections x 100/s whatever the proxy could do.
local deployments = 200
local counter = 0

function init(args)
  counter = math.random(0, deployments - 1)
end

function request()
  counter = (counter + 1) % deployments
  return wrk.format("GET", "/services/dep-" .. counter .. "/")
end

function delay()
  return 10
end
