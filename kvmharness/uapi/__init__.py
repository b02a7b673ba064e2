"""ctypes mirror of the KVM uapi headers for x86-64: structs, constants, ioctl numbers.

No behaviour lives here; ``kvmharness.kvm`` builds the fd objects on top of it."""

from kvmharness.uapi.caps import KvmCap  # noqa: F401 - re-exported
from kvmharness.uapi.ioctl import IoctlNumber  # noqa: F401 - re-exported
from kvmharness.uapi.ioctls import *  # noqa: F403 - the ioctl table is the API
from kvmharness.uapi.kvm import *  # noqa: F403
from kvmharness.uapi.x86 import *  # noqa: F403

