// Written by the NVMe backend work (see device/device.h).
