-- Argo CD health of a llmops.dev InferenceService, read from the operator's status (docs/operator.md).
-- Argo CD runs it in gopher-lua (Lua 5.1) without the string and math libraries: `..`, comparisons
-- and ipairs only. llmops-crdgen copies it into argocd/argocd-cm.yaml: edit here, then run it.
local function condition(status, type_)
  for _, c in ipairs(status.conditions or {}) do
    if c.type == type_ then return c end
  end
  return nil
end

local hs = {}
local status = obj.status or {}
local phase = status.phase
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
local ready = condition(status, "Ready") or {}
if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = status.message or ready.message or "Ready"
  return hs
end
-- Failed: the model cannot be served (its job failed or failed its quality gate, an engine that
-- cannot load it). Degraded: fewer replicas ready than wanted, an adapter failed, a stalled rollout.
if phase == "Failed" or phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = (ready.reason or phase) .. ": " .. (status.message or ready.message or "")
  return hs
end
local waiting = condition(status, "WaitingForModel")
if waiting ~= nil and waiting.status == "True" then
  hs.status = "Progressing"
  hs.message = "WaitingForModel: " .. (waiting.message or status.message or "")
  return hs
end
-- Pending, or Loading: no replica ready yet, or adapters loading.
hs.status = "Progressing"
hs.message = phase .. ": " .. (status.message or "")
return hs
