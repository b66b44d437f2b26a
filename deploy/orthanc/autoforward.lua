-- Orthanc auto-forward to the DICOM AI sidecar.
--
-- Every newly stored instance of a modality the sidecar's routes handle (conf/routes.yaml:
-- MR, US, CR, DX) is sent to the modality "sidecar" (ORTHANC__DICOM_MODALITIES in
-- docker-compose.yml). What the sidecar sends back (its SR, SC, GSPS and alert images) arrives
-- from the calling AE title SIDECAR and is never forwarded again, so results cannot loop.

local FORWARDED_MODALITIES = { MR = true, US = true, CR = true, DX = true }
local SIDECAR_MODALITY = 'sidecar'
local SIDECAR_AET = 'SIDECAR'

function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin ~= nil and origin['RemoteAet'] == SIDECAR_AET then
    return -- a result from the sidecar itself
  end
  local modality = tags['Modality']
  if modality == nil or not FORWARDED_MODALITIES[string.upper(modality)] then
    return
  end
  -- SendToModality queues a C-STORE job; Orthanc retries it and shows it under /jobs.
  SendToModality(instanceId, SIDECAR_MODALITY)
end
