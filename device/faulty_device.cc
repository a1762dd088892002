// FaultyDevice: see device/device.h.
