"""Hand radiographs: joint detection and per-joint grading (SHS narrowing for RA, KL for hand OA)."""
