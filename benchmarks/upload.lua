-- PUT a body of the size given as the first script argument (bytes) to the scenario's path, over and over.
function init(args)
  local size = tonumber(args[1] or "1048576")
  wrk.method = "PUT"
  wrk.body = string.rep("u", size)
  wrk.headers["Content-Type"] = "application/octet-stream"
end
