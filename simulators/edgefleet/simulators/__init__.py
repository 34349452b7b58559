"""The fleet simulator: many real agents, emulated microcontrollers, scripted faults."""
