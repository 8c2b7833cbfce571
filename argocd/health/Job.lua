-- Argo CD health of a llmops.dev FineTuneJob or CompressionJob (one life: a Job per attempt), read from
-- the operator's status (docs/operator.md). A FineTuneJob has no quality gate and never waits for input.
-- Argo CD runs it in gopher-lua (Lua 5.1) without the string and math libraries: `..`, comparisons
-- and ipairs only. llmops-crdgen copies it into argocd/argocd-cm.yaml: edit here, then run it.
local function condition(status, type_)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == type_ then return c end
  end
  return nil
end

local hs = {}
local spec = obj.spec or {}
local status = obj.status or {}
local phase = status.phase
local finished = phase == "Succeeded" or phase == "Failed"

-- Like a paused Deployment: what the spec asks wins until the job has ended.
if spec.suspend == true and not finished then
  hs.status = "Suspended"
  hs.message = (phase == "Suspended" and status.message) or "spec.suspend is true: no pods run"
  return hs
end
if phase == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to report a status"
  return hs
end
local generation = (obj.metadata or {}).generation
if generation ~= nil and status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe generation " .. tostring(generation) ..
    " (the status is of generation " .. tostring(status.observedGeneration) .. ")"
  return hs
end
-- A failed quality gate ends in Failed, reason QualityGateFailed, with both numbers in the message.
if phase == "Failed" then
  local failed = condition(status, "Failed") or {}
  hs.status = "Degraded"
  hs.message = (failed.reason or "Failed") .. ": " .. (status.message or failed.message or "")
  return hs
end
-- Never Healthy with a failed gate, whatever else the status says: its model is never served.
if status.qualityGate ~= nil and status.qualityGate.passed == false then
  hs.status = "Degraded"
  hs.message = "QualityGateFailed: " .. (status.message or "the quality gate failed")
  return hs
end
if phase == "Succeeded" then
  hs.status = "Healthy"
  hs.message = status.message or "Succeeded"
  return hs
end
local suspended = condition(status, "Suspended")
if phase == "Suspended" or (suspended ~= nil and suspended.status == "True" and suspended.reason == "Suspended") then
  hs.status = "Suspended"
  hs.message = status.message or "spec.suspend is true: no pods run"
  return hs
end
local waiting = condition(status, "WaitingForInput")
if waiting ~= nil and waiting.status == "True" then
  hs.status = "Progressing"
  hs.message = "WaitingForInput: " .. (waiting.message or status.message or "")
  return hs
end
-- Pending (starting, queued in Kueue, unschedulable, restarting after a failure) or Running.
hs.status = "Progressing"
hs.message = phase .. ": " .. (status.message or "")
return hs
