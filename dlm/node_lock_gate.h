// dlm/node_lock_gate.h — a node-wide DLM lock per resource, raised and lowered explicitly
// by a caller that keeps its own account of what this node's users need: the advisory
// locks' per-inode locks (dlm/advisory_locks.h) and ClusterLockService's uncached locks
// (LockSpace::kOpen). Unlike the LockCache it never keeps a lock nobody asked for, and a
// raise can be a try, or a wait that gives up when asked to.
//
// Thread-safety: all methods may be called from any thread.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "dlm/lock_service.h"
#include "dlm/resource_name.h"

namespace sharedfs::dlm {

class DlmNode;

// How a raise (or an advisory lock) is refused: code kBusy, and the errno to hand on.
inline Status lock_refused(int err, std::string message) {
  return Status(Code::kBusy, std::move(message), err);
}

class NodeLockGate {
 public:
  virtual ~NodeLockGate() = default;
  // Raises the node's lock on `name` to at least `mode` (PR or EX). Failures carry their
  // errno (Status::to_errno), code kBusy: EAGAIN when wait=false and another node holds it
  // in a conflicting mode, EDEADLK when the DLM broke a conversion deadlock, EINTR when
  // `interrupted` said yes during the wait (the request goes on, and is lowered again to
  // what the last lower() asked once it is granted).
  virtual Status raise(const ResourceName& name, LockMode mode, bool wait,
                       const std::function<bool()>& interrupted) = 0;
  // Lowers it to `mode` (NL: gives it up). With `wait`, done at the master when it returns
  // (one round trip, never another node), unless a raise is in flight (that one lowers
  // when it completes); without, it goes on in the background.
  virtual void lower(const ResourceName& name, LockMode mode, bool wait = true) = 0;
  // Waits up to `timeout` until no request of this gate is in flight; false if one still
  // is. Requests complete while the node is a cluster member: call it before the node
  // leaves, after which nobody answers them.
  virtual bool wait_idle(std::chrono::milliseconds timeout) = 0;
};

// A gate through the node's DLM (LockManager on the DlmNode's driver thread). The DlmNode
// must outlive it.
std::unique_ptr<NodeLockGate> make_dlm_lock_gate(DlmNode& node);
// A gate that always grants at once: one node alone (tests of its users).
std::unique_ptr<NodeLockGate> make_local_lock_gate();

}  // namespace sharedfs::dlm
