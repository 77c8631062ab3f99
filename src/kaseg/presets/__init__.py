"""Ready-made experiments on the built-in data: the demo, its limited-labels variant, and the study
that runs the comparison over regimes."""

# the names of release 0.1.0's kaseg.presets module, where its users import them from
from .recipes import (DEMO_ARMS, LABELED_COUNT, LIMITED_ARMS, TUNED_WEIGHT_SCALE, demo_arms,
                      demo_config, demo_spec, init_schedule, limited_spec, preset_spec)

__all__ = ["DEMO_ARMS", "LABELED_COUNT", "LIMITED_ARMS", "TUNED_WEIGHT_SCALE", "demo_arms",
           "demo_config", "demo_spec", "init_schedule", "limited_spec", "preset_spec"]
