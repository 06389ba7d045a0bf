-- Argo CD health of a ModelAdapter (finetune.dev/v1alpha1).
-- Healthy when Ready (the artifact is verified and servable); Degraded when Failed; Progressing
-- while Pending or Verifying, or while the operator has not seen the latest spec.
local hs = {}

local function message_of(kind, fallback)
  if obj.status.conditions ~= nil then
    for _, c in ipairs(obj.status.conditions) do
      if c.type == kind and c.message ~= nil and c.message ~= "" then
        return c.message
      end
    end
  end
  return fallback
end

-- The first check that failed says why: the artifact itself, or what serving stacks need.
local function failure(fallback)
  for _, kind in ipairs({"ArtifactVerified", "ServingCompatible", "Ready"}) do
    if obj.status.conditions ~= nil then
      for _, c in ipairs(obj.status.conditions) do
        if c.type == kind and c.status == "False" and c.message ~= nil and c.message ~= "" then
          return kind .. ": " .. c.message
        end
      end
    end
  end
  return fallback
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to verify the artifact"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. string.format("%d", generation)
  return hs
end

local phase = obj.status.phase
if phase == "Ready" then
  hs.status = "Healthy"
  hs.message = message_of("Ready", "Ready")
elseif phase == "Failed" then
  hs.status = "Degraded"
  hs.message = failure("Failed")
elseif phase == "Pending" or phase == "Verifying" then
  hs.status = "Progressing"
  hs.message = phase .. ": " .. message_of("ArtifactVerified", "verifying the artifact")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
