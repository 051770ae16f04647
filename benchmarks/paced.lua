-- The soak's load: spread.lua's requests over dep-0 .. dep-199, each connection pausing 10 ms between
-- requests, so the rate stays near connections x 100/s whatever the proxy could do.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "spread.lua")

function delay()
  return 10
end
