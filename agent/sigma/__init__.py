"""Sigma rules (YAML as published, parsed by pySigma) evaluated natively on chainwatch's events."""

from agent.sigma.detector import SigmaDetector, category_of
from agent.sigma.load import SigmaRuleEntry, SigmaRules, default_sigma_dir, load_sigma, read_sigma

__all__ = [
    "SigmaDetector",
    "SigmaRuleEntry",
    "SigmaRules",
    "category_of",
    "default_sigma_dir",
    "load_sigma",
    "read_sigma",
]
