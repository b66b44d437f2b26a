"""Gout screening at the first metatarsophalangeal joint (MTP1) on ultrasound."""
