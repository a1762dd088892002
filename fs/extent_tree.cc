#include "fs/extent_tree.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

namespace sharedfs::fs {
namespace {

using format::Extent;

uint64_t end_of(const Extent& e) { return e.logical + e.length; }

bool contiguous(const Extent& a, const Extent& b) {
  return end_of(a) == b.logical && a.physical + a.length == b.physical && a.flags == b.flags &&
         uint64_t{a.length} + b.length <= std::numeric_limits<uint32_t>::max();
}

}  // namespace

ExtentTree::ExtentTree(journal::TransactionManager& tm, allocator::Allocator& alloc,
                       const format::Superblock& sb, uint64_t ino, format::Inode& inode)
    : tm_(tm), alloc_(alloc), sb_(sb), ino_(ino), inode_(inode) {
  SHAREDFS_CHECK(!(inode.flags & format::Inode::kInlineData), "extent tree of an inline inode");
}

size_t ExtentTree::capacity(const Node& n) const {
  return n.blkno == 0 ? format::Inode::extent_root_capacity(sb_.geo.block_size)
                      : format::ExtentNode::capacity(sb_.geo.block_size);
}

ExtentTree::Node ExtentTree::root() const {
  return Node{.blkno = 0, .depth = inode_.extent_depth, .entries = inode_.extent_root, .buf = {}};
}

Result<ExtentTree::Node> ExtentTree::load(uint64_t blkno, uint16_t expected_depth) {
  if (!sb_.geo.ag_of(blkno)) {
    return make_status(Code::kCorruption,
                       "extent tree of inode {} points at block {}, outside "
                       "every allocation group",
                       ino_, blkno);
  }
  ASSIGN_OR_RETURN(journal::BufferRef buf, tm_.read(blkno));
  ASSIGN_OR_RETURN(format::ExtentNode node,
                   format::ExtentNode::decode(buf->data(), {blkno, sb_.fs_tag()}));
  if (node.owner != ino_ || node.depth != expected_depth) {
    return make_status(Code::kCorruption,
                       "extent node {} belongs to inode {} at depth {}, expected inode {} depth {}",
                       blkno, node.owner, node.depth, ino_, expected_depth);
  }
  return Node{.blkno = blkno,
              .depth = node.depth,
              .entries = std::move(node.entries),
              .buf = std::move(buf)};
}

void ExtentTree::store(journal::Handle& h, Node& n) {
  if (n.blkno == 0) {
    inode_.extent_root = n.entries;
    inode_.extent_depth = n.depth;
    return;
  }
  format::ExtentNode node{
      .seq = h.transaction(), .owner = ino_, .depth = n.depth, .entries = n.entries};
  node.encode(n.buf->data(), {n.blkno, sb_.fs_tag()});
  h.dirty(n.buf);
}

Result<ExtentTree::Node> ExtentTree::new_node(journal::Handle& h, uint16_t depth) {
  // Near the inode: tree blocks are read with it.
  ASSIGN_OR_RETURN(allocator::BlockRange r, alloc_.allocate(h, ino_, 1, 1));
  ++inode_.blocks;
  return Node{.blkno = r.start, .depth = depth, .entries = {}, .buf = tm_.create(r.start)};
}

Status ExtentTree::free_node(journal::Handle& h, uint64_t blkno) {
  --inode_.blocks;
  return alloc_.free(h, {blkno, 1}, /*metadata=*/true);
}

size_t ExtentTree::route(const Node& n, uint64_t logical) {
  // Last entry whose key is <= logical; entry 0 when none is.
  auto it = std::upper_bound(n.entries.begin(), n.entries.end(), logical,
                             [](uint64_t l, const Extent& e) { return l < e.logical; });
  return it == n.entries.begin() ? 0 : static_cast<size_t>(it - n.entries.begin()) - 1;
}

// ---------------------------------------------------------------------------------------
// Lookups

Result<std::optional<Extent>> ExtentTree::first_from(Node& n, uint64_t logical) {
  if (n.depth == 0) {
    for (const Extent& e : n.entries) {
      if (end_of(e) > logical) return std::optional<Extent>(e);
    }
    return std::optional<Extent>();
  }
  for (size_t i = n.entries.empty() ? 0 : route(n, logical); i < n.entries.size(); ++i) {
    ASSIGN_OR_RETURN(Node child, load(n.entries[i].physical, n.depth - 1));
    ASSIGN_OR_RETURN(auto found, first_from(child, logical));
    if (found) return found;
  }
  return std::optional<Extent>();
}

Result<std::optional<Extent>> ExtentTree::next_extent(uint64_t logical) {
  Node r = root();
  return first_from(r, logical);
}

Result<Mapping> ExtentTree::lookup(uint64_t logical) {
  ASSIGN_OR_RETURN(auto e, next_extent(logical));
  if (!e) return Mapping{logical, 0, std::numeric_limits<uint64_t>::max() - logical, false};
  if (e->logical > logical) return Mapping{logical, 0, e->logical - logical, false};
  const uint64_t off = logical - e->logical;
  return Mapping{logical, e->physical + off, e->length - off, (e->flags & Extent::kUnwritten) != 0};
}

Status ExtentTree::collect(Node& n, uint64_t start, uint64_t end, std::vector<Extent>& out) {
  if (n.depth == 0) {
    for (const Extent& e : n.entries) {
      if (end_of(e) > start && e.logical < end) out.push_back(e);
    }
    return Status::ok();
  }
  for (size_t i = n.entries.empty() ? 0 : route(n, start); i < n.entries.size(); ++i) {
    if (i > 0 && n.entries[i].logical >= end) break;
    ASSIGN_OR_RETURN(Node child, load(n.entries[i].physical, n.depth - 1));
    RETURN_IF_ERROR(collect(child, start, end, out));
  }
  return Status::ok();
}

Status ExtentTree::collect_nodes(const Node& n, std::vector<uint64_t>& out) {
  if (n.depth == 0) return Status::ok();
  for (const Extent& e : n.entries) {
    out.push_back(e.physical);
    if (n.depth > 1) {
      ASSIGN_OR_RETURN(Node child, load(e.physical, n.depth - 1));
      RETURN_IF_ERROR(collect_nodes(child, out));
    }
  }
  return Status::ok();
}

Result<std::vector<uint64_t>> ExtentTree::node_blocks() {
  std::vector<uint64_t> out;
  RETURN_IF_ERROR(collect_nodes(root(), out));
  return out;
}

Result<std::vector<Extent>> ExtentTree::extents(uint64_t start, uint64_t end) {
  std::vector<Extent> out;
  Node r = root();
  RETURN_IF_ERROR(collect(r, start, end, out));
  return out;
}

// ---------------------------------------------------------------------------------------
// Insert

Result<std::optional<ExtentTree::Split>> ExtentTree::insert_into(journal::Handle& h, Node& n,
                                                                 const Extent& e) {
  if (n.depth == 0) {
    auto pos = std::upper_bound(n.entries.begin(), n.entries.end(), e.logical,
                                [](uint64_t l, const Extent& x) { return l < x.logical; });
    if ((pos != n.entries.begin() && end_of(*std::prev(pos)) > e.logical) ||
        (pos != n.entries.end() && pos->logical < end_of(e))) {
      return make_status(Code::kInternal, "inode {}: extent at {} overlaps a mapped block", ino_,
                         e.logical);
    }
    pos = n.entries.insert(pos, e);
    // Merge with the following and the preceding extent where they continue each other.
    if (std::next(pos) != n.entries.end() && contiguous(*pos, *std::next(pos))) {
      pos->length += std::next(pos)->length;
      n.entries.erase(std::next(pos));
    }
    if (pos != n.entries.begin() && contiguous(*std::prev(pos), *pos)) {
      std::prev(pos)->length += pos->length;
      n.entries.erase(pos);
    }
  } else {
    size_t i = route(n, e.logical);
    // An extent filling a punched hole may run past the next entry's key, and lookups route
    // the blocks from that key on to the next child. Such an extent goes to the next child
    // instead, with the key lowered to its start: this child holds nothing at or above
    // e.logical (those blocks are unmapped up to the key, and it holds none beyond), and
    // the next child's first mapped block lies past the extent's end (so it crosses no
    // further key).
    if (i + 1 < n.entries.size() && end_of(e) > n.entries[i + 1].logical) ++i;
    ASSIGN_OR_RETURN(Node child, load(n.entries[i].physical, n.depth - 1));
    ASSIGN_OR_RETURN(auto split, insert_into(h, child, e));
    n.entries[i].logical = std::min(n.entries[i].logical, e.logical);
    if (split) {
      n.entries.insert(n.entries.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                       Extent{split->key, split->blkno, 0, 0});
    }
  }

  std::optional<Split> result;
  if (n.entries.size() > capacity(n)) {
    if (n.blkno == 0) {
      // The root is full: move its entries one level down, into a new node (a node holds
      // more entries than the root, so they fit).
      ASSIGN_OR_RETURN(Node child, new_node(h, n.depth));
      child.entries = std::move(n.entries);
      store(h, child);
      n.entries = {Extent{child.entries.front().logical, child.blkno, 0, 0}};
      ++n.depth;
    } else {
      ASSIGN_OR_RETURN(Node right, new_node(h, n.depth));
      const auto half = static_cast<std::ptrdiff_t>(n.entries.size() / 2);
      right.entries.assign(n.entries.begin() + half, n.entries.end());
      n.entries.erase(n.entries.begin() + half, n.entries.end());
      store(h, right);
      result = Split{right.entries.front().logical, right.blkno};
    }
  }
  store(h, n);
  return result;
}

Status ExtentTree::insert(journal::Handle& h, const Extent& e) {
  if (e.length == 0 || e.physical == 0) {
    return make_status(Code::kInvalidArgument, "inode {}: empty or unplaced extent", ino_);
  }
  Node r = root();
  ASSIGN_OR_RETURN(auto split, insert_into(h, r, e));
  SHAREDFS_CHECK(!split.has_value(), "the root never splits sideways");
  return Status::ok();
}

// ---------------------------------------------------------------------------------------
// Remove

Status ExtentTree::remove_from(journal::Handle& h, Node& n, uint64_t start, uint64_t end,
                               std::vector<allocator::BlockRange>& freed,
                               std::vector<Extent>& reinsert) {
  bool changed = false;
  if (n.depth == 0) {
    std::vector<Extent> kept;
    kept.reserve(n.entries.size());
    for (const Extent& e : n.entries) {
      if (end_of(e) <= start || e.logical >= end) {
        kept.push_back(e);
        continue;
      }
      changed = true;
      const uint64_t from = std::max(e.logical, start);
      const uint64_t to = std::min(end_of(e), end);
      freed.push_back({e.physical + (from - e.logical), static_cast<uint32_t>(to - from)});
      if (e.logical < from) {
        kept.push_back({e.logical, e.physical, static_cast<uint32_t>(from - e.logical), e.flags});
      }
      // A hole punched in the middle leaves a right part: put it back after this pass, so
      // removal itself never adds entries (and never splits a node).
      if (to < end_of(e)) {
        reinsert.push_back(
            {to, e.physical + (to - e.logical), static_cast<uint32_t>(end_of(e) - to), e.flags});
      }
    }
    n.entries = std::move(kept);
  } else {
    std::vector<Extent> kept;
    for (size_t i = 0; i < n.entries.size(); ++i) {
      const Extent& entry = n.entries[i];
      const uint64_t next_key = i + 1 < n.entries.size() ? n.entries[i + 1].logical
                                                         : std::numeric_limits<uint64_t>::max();
      // The child holds blocks below next_key only; entry 0 may also hold blocks below
      // its own key, so it is always visited.
      if ((i > 0 && entry.logical >= end) || next_key <= start) {
        kept.push_back(entry);
        continue;
      }
      ASSIGN_OR_RETURN(Node child, load(entry.physical, n.depth - 1));
      RETURN_IF_ERROR(remove_from(h, child, start, end, freed, reinsert));
      if (child.entries.empty()) {
        RETURN_IF_ERROR(free_node(h, child.blkno));
        changed = true;
      } else {
        kept.push_back(entry);
      }
    }
    n.entries = std::move(kept);
  }
  if (n.blkno == 0) {
    // Shrink the tree while the root has one child whose entries fit in the root.
    while (n.depth > 0 && n.entries.size() <= 1) {
      if (n.entries.empty()) {
        n.depth = 0;
        break;
      }
      ASSIGN_OR_RETURN(Node only, load(n.entries[0].physical, n.depth - 1));
      if (only.entries.size() > capacity(n)) break;
      RETURN_IF_ERROR(free_node(h, only.blkno));
      n.entries = std::move(only.entries);
      n.depth = only.depth;
      changed = true;
    }
  }
  if (changed || n.blkno == 0) store(h, n);
  return Status::ok();
}

Result<std::vector<allocator::BlockRange>> ExtentTree::remove(journal::Handle& h, uint64_t start,
                                                              uint64_t end) {
  std::vector<allocator::BlockRange> freed;
  if (start >= end) return freed;
  std::vector<Extent> reinsert;
  Node r = root();
  RETURN_IF_ERROR(remove_from(h, r, start, end, freed, reinsert));
  for (const Extent& e : reinsert) RETURN_IF_ERROR(insert(h, e));
  return freed;
}

}  // namespace sharedfs::fs
