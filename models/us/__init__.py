"""The musculoskeletal ultrasound front end shared by the synovitis and gout models.

`decode` turns any US photometric / transfer syntax into RGB frames, `regions` reads the US
Region Calibration module (PS3.3 C.8.5.5), `frontend` crops, masks, separates the power Doppler
channel and samples cine frames, `predicates` gives the router its header cues, and `headers`
reads the laterality both models report.
"""
