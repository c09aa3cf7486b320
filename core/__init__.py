"""The training engine: config, toggles, data, augmentation, model, schedules, loop, tracking."""
