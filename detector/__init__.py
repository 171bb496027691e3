"""Pure detection logic: features, detectors, thresholds, explanations, policy.

No I/O; imports nothing else from the project.
"""
