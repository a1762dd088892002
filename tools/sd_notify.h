// systemd's service notification protocol (sd_notify(3)) without linking libsystemd: one
// datagram with "READY=1" (or another state) to the socket named in $NOTIFY_SOCKET. The
// sharedfs@.service unit is Type=notify, so that units ordered after it (remote-fs.target)
// start only once the file system is mounted, not when the daemon starts joining.
//
// Thread-safety: any thread; reads the environment.
#pragma once

#include <string_view>

#include "common/status.h"

namespace sharedfs::tools {

// Sends `state` (e.g. "READY=1") when $NOTIFY_SOCKET is set (a path, or "@name" for the
// abstract namespace); OK and nothing sent when it is not (not run by systemd).
Status notify_systemd(std::string_view state);

}  // namespace sharedfs::tools
