// Extended attributes and POSIX ACLs.
//
// An inode's xattrs live in one XattrBlock (Inode::xattr_block, allocated on first use,
// freed when the last one goes), so the names and values of one inode are limited to a
// block (ENOSPC beyond, as ext4 without ea_inode). Namespaces: user., trusted., security.
// and the two POSIX ACLs (system.posix_acl_access / _default); the kernel checks who may
// touch which. ACLs are stored in the kernel's xattr form; the FUSE frontend lets the kernel
// enforce them (FUSE_CAP_POSIX_ACL), and this file keeps the mode in step with the access
// ACL and applies a directory's default ACL to what is created in it.
#include <fmt/format.h>
#include <sys/xattr.h>

#include <algorithm>
#include <cstring>

#include "fs/fs.h"
#include "fs/fs_internal.h"

namespace sharedfs::fs {

using detail::posix_error;
using format::Inode;
using format::XattrBlock;

namespace {

constexpr std::string_view kAclAccess = "system.posix_acl_access";
constexpr std::string_view kAclDefault = "system.posix_acl_default";

Status check_xattr_name(std::string_view name) {
  if (name.empty()) return posix_error(EINVAL, "empty xattr name");
  if (name.size() > 255) return posix_error(ERANGE, "xattr name longer than 255 bytes");
  for (std::string_view prefix : {"user.", "trusted.", "security."}) {
    if (name.starts_with(prefix) && name.size() > prefix.size()) return Status::ok();
  }
  if (name == kAclAccess || name == kAclDefault) return Status::ok();
  return posix_error(EOPNOTSUPP, fmt::format("xattr namespace of \"{}\" not supported", name));
}

// POSIX ACLs in the kernel's xattr form: u32 version 2, then {u16 tag, u16 perm, u32 id}.
enum AclTag : uint16_t {
  kUserObj = 0x01,
  kUser = 0x02,
  kGroupObj = 0x04,
  kGroup = 0x08,
  kMask = 0x10,
  kOther = 0x20,
};
struct AclEntry {
  uint16_t tag;
  uint16_t perm;
  uint32_t id;
};

Result<std::vector<AclEntry>> parse_acl(std::span<const uint8_t> v) {
  auto rd16 = [&](size_t o) { return static_cast<uint16_t>(v[o] | v[o + 1] << 8); };
  auto rd32 = [&](size_t o) {
    return static_cast<uint32_t>(v[o] | v[o + 1] << 8 | v[o + 2] << 16 |
                                 static_cast<uint32_t>(v[o + 3]) << 24);
  };
  if (v.size() < 4 || (v.size() - 4) % 8 != 0 || rd32(0) != 2) {
    return posix_error(EINVAL, "malformed POSIX ACL");
  }
  std::vector<AclEntry> out;
  int user_obj = 0, group_obj = 0, other = 0, mask = 0, named = 0;
  for (size_t o = 4; o < v.size(); o += 8) {
    AclEntry e{rd16(o), rd16(o + 2), rd32(o + 4)};
    if (e.perm & ~7u) return posix_error(EINVAL, "ACL permission bits");
    switch (e.tag) {
      case kUserObj:
        ++user_obj;
        break;
      case kGroupObj:
        ++group_obj;
        break;
      case kOther:
        ++other;
        break;
      case kMask:
        ++mask;
        break;
      case kUser:
      case kGroup:
        ++named;
        break;
      default:
        return posix_error(EINVAL, fmt::format("ACL tag {:#x}", e.tag));
    }
    out.push_back(e);
  }
  if (user_obj != 1 || group_obj != 1 || other != 1 || mask > 1 || (named > 0 && mask == 0)) {
    return posix_error(EINVAL, "ACL entries incomplete");
  }
  return out;
}

std::vector<uint8_t> encode_acl(const std::vector<AclEntry>& acl) {
  std::vector<uint8_t> v(4 + 8 * acl.size());
  auto wr16 = [&](size_t o, uint16_t x) {
    v[o] = static_cast<uint8_t>(x);
    v[o + 1] = static_cast<uint8_t>(x >> 8);
  };
  auto wr32 = [&](size_t o, uint32_t x) {
    for (int i = 0; i < 4; ++i) v[o + i] = static_cast<uint8_t>(x >> (8 * i));
  };
  wr32(0, 2);
  for (size_t i = 0; i < acl.size(); ++i) {
    wr16(4 + 8 * i, acl[i].tag);
    wr16(6 + 8 * i, acl[i].perm);
    wr32(8 + 8 * i, acl[i].id);
  }
  return v;
}

// The permission bits an access ACL implies (group class: the mask if any).
uint32_t mode_of_acl(const std::vector<AclEntry>& acl) {
  uint32_t u = 0, g = 0, o = 0, m = 0;
  bool has_mask = false;
  for (const auto& e : acl) {
    if (e.tag == kUserObj) u = e.perm;
    if (e.tag == kGroupObj) g = e.perm;
    if (e.tag == kOther) o = e.perm;
    if (e.tag == kMask) {
      m = e.perm;
      has_mask = true;
    }
  }
  return u << 6 | (has_mask ? m : g) << 3 | o;
}

// An ACL of only owner, group and other says nothing the mode does not.
bool equivalent_to_mode(const std::vector<AclEntry>& acl) { return acl.size() == 3; }

// posix_acl_chmod / posix_acl_create: the ACL's owner, group-class and other entries take
// the mode's bits (create: intersected with them).
void apply_mode(std::vector<AclEntry>& acl, uint32_t mode, bool intersect) {
  const bool has_mask = std::any_of(acl.begin(), acl.end(), [](auto& e) { return e.tag == kMask; });
  for (auto& e : acl) {
    uint32_t bits = 0xffff;
    if (e.tag == kUserObj) bits = mode >> 6 & 7;
    if (e.tag == kOther) bits = mode & 7;
    if (e.tag == kMask || (e.tag == kGroupObj && !has_mask)) bits = mode >> 3 & 7;
    if (bits == 0xffff) continue;
    e.perm = static_cast<uint16_t>(intersect ? (e.perm & bits) : bits);
  }
}

}  // namespace

Result<XattrBlock> FileSystem::load_xattrs(const Inode& inode, Ino ino) {
  XattrBlock xb;
  xb.owner = ino;
  if (inode.xattr_block == 0) return xb;
  ASSIGN_OR_RETURN(auto buf, tm_->read(inode.xattr_block));
  auto decoded = XattrBlock::decode(buf->data(), ctx(inode.xattr_block));
  if (!decoded) return Status(Code::kCorruption, decoded.status().message(), EIO);
  if (decoded->owner != ino) {
    return Status(Code::kCorruption,
                  fmt::format("xattr block {} belongs to inode {}, not {}", inode.xattr_block,
                              decoded->owner, ino),
                  EIO);
  }
  return std::move(*decoded);
}

// Writes `xb` as the inode's xattr block: allocates one for the first attribute, frees it
// with the last. The caller stores the inode afterwards.
Status FileSystem::store_xattrs(journal::Handle& h, InodeRef& ref, XattrBlock& xb) {
  Inode& n = ref.inode;
  if (xb.entries.empty()) {
    if (n.xattr_block != 0) {
      RETURN_IF_ERROR(alloc_->free(h, {n.xattr_block, 1}, /*metadata=*/true));
      n.xattr_block = 0;
      --n.blocks;
    }
    return Status::ok();
  }
  if (XattrBlock::bytes_for(xb.entries) > XattrBlock::area(bs_)) {
    return posix_error(ENOSPC, "the inode's xattrs do not fit one block");
  }
  journal::BufferRef buf;
  if (n.xattr_block == 0) {
    ASSIGN_OR_RETURN(auto r, alloc_->allocate(h, ref.ino, 1, 1));
    n.xattr_block = r.start;
    ++n.blocks;
    buf = tm_->create(r.start);
  } else {
    ASSIGN_OR_RETURN(buf, tm_->read(n.xattr_block));
  }
  ++xb.seq;
  xb.owner = ref.ino;
  xb.encode(buf->data(), ctx(n.xattr_block));
  h.dirty(buf);
  return Status::ok();
}

Result<std::vector<uint8_t>> FileSystem::getxattr(Ino ino, std::string_view name) {
  RETURN_IF_ERROR(check_xattr_name(name));
  ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto ref, load(ino));
  ASSIGN_OR_RETURN(auto xb, load_xattrs(ref.inode, ino));
  for (auto& e : xb.entries) {
    if (e.name == name) return std::move(e.value);
  }
  return posix_error(ENODATA, fmt::format("no xattr \"{}\"", name));
}

Result<std::string> FileSystem::listxattr(Ino ino) {
  ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kPR));
  ASSIGN_OR_RETURN(auto ref, load(ino));
  ASSIGN_OR_RETURN(auto xb, load_xattrs(ref.inode, ino));
  std::string out;
  for (const auto& e : xb.entries) {
    out += e.name;
    out.push_back('\0');
  }
  return out;
}

Status FileSystem::setxattr(Ino ino, std::string_view name, std::span<const uint8_t> value,
                            int flags) {
  RETURN_IF_ERROR(check_xattr_name(name));
  {
    ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto ref, load(ino));
    ASSIGN_OR_RETURN(auto xb, load_xattrs(ref.inode, ino));
    std::vector<uint8_t> v(value.begin(), value.end());
    bool store_entry = true;
    if (name == kAclAccess || name == kAclDefault) {
      ASSIGN_OR_RETURN(auto acl, parse_acl(value));
      if (name == kAclDefault && !ref.is_dir()) {
        return posix_error(EACCES, "default ACL on a non-directory");
      }
      if (name == kAclAccess) {
        ref.inode.mode = (ref.inode.mode & ~0777u) | mode_of_acl(acl);
        store_entry = !equivalent_to_mode(acl);
      }
    }
    auto it = std::find_if(xb.entries.begin(), xb.entries.end(),
                           [&](const auto& e) { return e.name == name; });
    if ((flags & XATTR_CREATE) && it != xb.entries.end()) {
      return posix_error(EEXIST, fmt::format("xattr \"{}\" exists", name));
    }
    if ((flags & XATTR_REPLACE) && it == xb.entries.end()) {
      return posix_error(ENODATA, fmt::format("no xattr \"{}\"", name));
    }
    if (!store_entry) {
      if (it != xb.entries.end()) xb.entries.erase(it);
    } else if (it != xb.entries.end()) {
      it->value = std::move(v);
    } else {
      xb.entries.push_back({std::string(name), std::move(v)});
      std::sort(xb.entries.begin(), xb.entries.end(),
                [](const auto& a, const auto& b) { return a.name < b.name; });
    }
    if (XattrBlock::bytes_for(xb.entries) > XattrBlock::area(bs_)) {
      return posix_error(ENOSPC, "the inode's xattrs do not fit one block");
    }
    RETURN_IF_ERROR(write_xattrs(ref, xb));
  }
  return maybe_commit();
}

Status FileSystem::removexattr(Ino ino, std::string_view name) {
  RETURN_IF_ERROR(check_xattr_name(name));
  {
    ASSIGN_OR_RETURN(auto lock, lock_inode(ino, dlm::LockMode::kEX));
    ASSIGN_OR_RETURN(auto ref, load(ino));
    ASSIGN_OR_RETURN(auto xb, load_xattrs(ref.inode, ino));
    auto it = std::find_if(xb.entries.begin(), xb.entries.end(),
                           [&](const auto& e) { return e.name == name; });
    if (it == xb.entries.end()) return posix_error(ENODATA, fmt::format("no xattr \"{}\"", name));
    xb.entries.erase(it);
    RETURN_IF_ERROR(write_xattrs(ref, xb));
  }
  return maybe_commit();
}

Status FileSystem::write_xattrs(InodeRef& ref, format::XattrBlock& xb) {
  ASSIGN_OR_RETURN(auto frees, ags_to_free(ref, UINT64_MAX, /*tree_nodes=*/false));
  ASSIGN_OR_RETURN(auto change, begin_change(kMetadataBlocks, frees));
  journal::Handle& h = change.handle;
  RETURN_IF_ERROR(store_xattrs(h, ref, xb));
  ref.inode.ctime_ns = detail::now_ns();
  store(h, ref);
  return Status::ok();
}

Status FileSystem::inherit_acls(journal::Handle& h, const InodeRef& parent, InodeRef& child,
                                const Caller& caller) {
  Inode& n = child.inode;
  ASSIGN_OR_RETURN(auto pxb, load_xattrs(parent.inode, parent.ino));
  auto it = std::find_if(pxb.entries.begin(), pxb.entries.end(),
                         [](const auto& e) { return e.name == kAclDefault; });
  if (it == pxb.entries.end()) {
    n.mode &= ~(caller.umask & 0777);
    return Status::ok();
  }
  auto parsed = parse_acl(it->value);
  if (!parsed) {
    n.mode &= ~(caller.umask & 0777);
    return Status::ok();  // an unreadable default ACL is ignored, as if absent
  }
  std::vector<AclEntry> acl = *parsed;
  apply_mode(acl, n.mode, /*intersect=*/true);
  n.mode = (n.mode & ~0777u) | mode_of_acl(acl);
  XattrBlock xb;
  if (!equivalent_to_mode(acl)) xb.entries.push_back({std::string(kAclAccess), encode_acl(acl)});
  if (child.is_dir()) xb.entries.push_back({std::string(kAclDefault), it->value});
  std::sort(xb.entries.begin(), xb.entries.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return store_xattrs(h, child, xb);
}

Status FileSystem::sync_acl_with_mode(journal::Handle& h, InodeRef& ref) {
  if (ref.inode.xattr_block == 0) return Status::ok();
  ASSIGN_OR_RETURN(auto xb, load_xattrs(ref.inode, ref.ino));
  auto it = std::find_if(xb.entries.begin(), xb.entries.end(),
                         [](const auto& e) { return e.name == kAclAccess; });
  if (it == xb.entries.end()) return Status::ok();
  auto acl = parse_acl(it->value);
  if (!acl) return Status::ok();
  apply_mode(*acl, ref.inode.mode, /*intersect=*/false);
  it->value = encode_acl(*acl);
  return store_xattrs(h, ref, xb);
}

}  // namespace sharedfs::fs
