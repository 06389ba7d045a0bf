-- Argo CD health of a FineTuneJob (finetune.dev/v1alpha1).
-- Progressing while the operator has not seen the latest spec, and while the job is Pending,
-- Suspended (waiting for Kueue, say) or Running; Healthy once Succeeded; Degraded once Failed.
local hs = {}

local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function message_of(kind, fallback)
  local c = condition(kind)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local function number(value)
  if value == math.floor(value) then
    return string.format("%d", value)
  end
  return string.format("%.4g", value)
end

local function progress()
  local p = obj.status.progress
  if p == nil or p.step == nil then
    return nil
  end
  local text = "step " .. number(p.step)
  if p.totalSteps ~= nil then
    text = text .. "/" .. number(p.totalSteps)
  end
  if p.percent ~= nil then
    text = text .. " (" .. number(p.percent) .. "%)"
  end
  if p.trainLoss ~= nil then
    text = text .. ", loss " .. number(p.trainLoss)
  end
  if p.eta ~= nil and p.eta ~= "" then
    text = text .. ", ETA " .. p.eta
  end
  return text
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. number(generation)
  return hs
end

-- A stored spec the operator cannot read (written before a schema change, say) waits for a fix.
local created = condition("Created")
if created ~= nil and created.status == "False" and created.reason == "InvalidSpec" then
  hs.status = "Degraded"
  hs.message = message_of("Created", "the spec is invalid")
  return hs
end

local phase = obj.status.phase
if phase == "Succeeded" then
  hs.status = "Healthy"
  if obj.status.adapter ~= nil and obj.status.adapter.name ~= nil then
    hs.message = "Succeeded: published ModelAdapter " .. obj.status.adapter.name
  else
    hs.message = message_of("Succeeded", "Succeeded")
  end
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message_of("Failed", "Failed")
elseif phase == "Running" then
  hs.status = "Progressing"
  hs.message = progress() or message_of("Running", "Running")
elseif phase == "Suspended" then
  hs.status = "Progressing"
  hs.message = "Suspended: " .. message_of("Suspended", "the training Job is suspended")
elseif phase == "Pending" then
  hs.status = "Progressing"
  local blocked = condition("ReferencesResolved")
  if blocked ~= nil and blocked.status == "False" then
    hs.message = "Pending: " .. blocked.message
  else
    hs.message = "Pending: " .. message_of("Created", "waiting for the training pods")
  end
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
