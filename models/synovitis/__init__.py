"""RA synovitis grading on ultrasound (EULAR-OMERACT 0-3): four variants, one code path."""
