//! Calibration data, statistics accumulators and the sequential layer-by-layer driver every method plugs into.
