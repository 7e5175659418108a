-- Argo CD health of a dyff.io Model (resource.customizations.health.dyff.io_Model).
-- Healthy: the Ready condition is True. Degraded: phase Failed. Progressing: anything
-- else, including no status yet and a status older than metadata.generation.
local hs = {}

local function nonempty(s)
  return s ~= nil and s ~= ""
end

local function find_ready(status)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      return c
    end
  end
  return nil
end

-- "Phase: detail" while the controller works.
local function progress(phase, status, ready)
  if nonempty(status.message) then
    return phase .. ": " .. status.message
  end
  if ready ~= nil and nonempty(ready.message) then
    return phase .. ": " .. ready.message
  end
  return phase
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the controller"
  return hs
end

local status = obj.status
local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end
local observed = status.observedGeneration or 0
local ready = find_ready(status)
-- A status written for an older spec says nothing about the current one.
if observed < generation
  or (ready ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation)
then
  hs.status = "Progressing"
  hs.message = string.format("Waiting for the controller to observe generation %d", generation)
  return hs
end

local phase = status.phase or "Pending"
if phase == "Failed" then
  hs.status = "Degraded"
  if ready ~= nil and nonempty(ready.message) then
    hs.message = ready.message
  elseif nonempty(status.message) then
    hs.message = status.message
  else
    hs.message = "Failed"
  end
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  if nonempty(ready.message) then
    hs.message = ready.message
  else
    hs.message = phase
  end
  return hs
end

hs.status = "Progressing"
hs.message = progress(phase, status, ready)
return hs
