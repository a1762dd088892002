#include "fs/directory.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace sharedfs::fs {
namespace {

using format::DirEntry;
using format::DirIndex;
using format::DirLeaf;

bool entry_less(const DirEntry& a, const DirEntry& b) {
  return a.hash != b.hash ? a.hash < b.hash : a.name < b.name;
}

size_t bytes_of(const std::vector<DirEntry>& entries) {
  size_t n = 0;
  for (const auto& e : entries) n += format::dir_entry_size(e.name.size());
  return n;
}

Status check_name(std::string_view name) {
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string_view::npos ||
      name.find('\0') != std::string_view::npos) {
    return make_status(Code::kInvalidArgument, "invalid name \"{}\"", name);
  }
  if (name.size() > format::kMaxNameLength) {
    return Status(Code::kInvalidArgument, "name too long", ENAMETOOLONG);
  }
  return Status::ok();
}

// Cookies of a run of entries sorted by (hash, name): k counts equal hashes from 1.
std::vector<uint64_t> cookies_of(const std::vector<DirEntry>& sorted) {
  std::vector<uint64_t> out(sorted.size());
  uint32_t k = 0;
  for (size_t i = 0; i < sorted.size(); ++i) {
    k = (i > 0 && sorted[i].hash == sorted[i - 1].hash) ? k + 1 : 1;
    out[i] = dir_cookie(sorted[i].hash, k);
  }
  return out;
}

}  // namespace

Directory::Directory(journal::TransactionManager& tm, allocator::Allocator& alloc,
                     const format::Superblock& sb, uint64_t ino, format::Inode& inode)
    : tm_(tm), alloc_(alloc), sb_(sb), ino_(ino), inode_(inode) {}

ExtentTree Directory::table_map() { return ExtentTree(tm_, alloc_, sb_, ino_, inode_); }

size_t Directory::leaf_area() const { return sb_.geo.block_size - DirLeaf::kEntriesOffset; }
size_t Directory::inline_area() const { return format::Inode::inline_capacity(sb_.geo.block_size); }
bool Directory::fits(const std::vector<DirEntry>& entries, size_t area) {
  return bytes_of(entries) <= area;
}

uint64_t Directory::table_index(uint32_t hash) const {
  return inode_.dir_depth == 0 ? 0 : hash >> (32 - inode_.dir_depth);
}

// ---------------------------------------------------------------------------------------
// Inline directories

Result<std::vector<DirEntry>> Directory::inline_entries() const {
  auto entries = format::decode_dir_entries(std::as_bytes(std::span(inode_.inline_data)));
  if (!entries) return entries.status().with_context(fmt::format("directory inode {}", ino_));
  return entries;
}

Status Directory::store_inline(const std::vector<DirEntry>& entries) {
  inode_.inline_data.resize(bytes_of(entries));
  return format::encode_dir_entries(std::as_writable_bytes(std::span(inode_.inline_data)), entries);
}

// ---------------------------------------------------------------------------------------
// The hash table

Result<journal::BufferRef> Directory::table_block(uint64_t index) {
  ASSIGN_OR_RETURN(Mapping m, table_map().lookup(index));
  if (m.is_hole()) {
    return make_status(Code::kCorruption, "directory {}: hash table block {} is not mapped", ino_,
                       index);
  }
  return tm_.read(m.physical);
}

Result<uint64_t> Directory::table_pointer(uint64_t index) {
  const uint64_t per_block = DirIndex::capacity(sb_.geo.block_size);
  ASSIGN_OR_RETURN(journal::BufferRef buf, table_block(index / per_block));
  ASSIGN_OR_RETURN(DirIndex t, DirIndex::decode(buf->data(), {buf->blkno(), sb_.fs_tag()}));
  const uint64_t slot = index % per_block;
  if (t.owner != ino_ || t.first_index != index - slot || slot >= t.leaves.size()) {
    return make_status(Code::kCorruption, "directory {}: hash table block {} does not hold slot {}",
                       ino_, buf->blkno(), index);
  }
  return t.leaves[slot];
}

Status Directory::set_table_pointers(journal::Handle& h, uint64_t first, uint64_t count,
                                     uint64_t leaf) {
  const uint64_t per_block = DirIndex::capacity(sb_.geo.block_size);
  uint64_t i = first;
  while (i < first + count) {
    ASSIGN_OR_RETURN(journal::BufferRef buf, table_block(i / per_block));
    ASSIGN_OR_RETURN(DirIndex t, DirIndex::decode(buf->data(), {buf->blkno(), sb_.fs_tag()}));
    for (; i < first + count && i / per_block == t.first_index / per_block; ++i) {
      t.leaves.at(i % per_block) = leaf;
    }
    t.seq = h.transaction();
    t.encode(buf->data(), {buf->blkno(), sb_.fs_tag()});
    h.dirty(buf);
  }
  return Status::ok();
}

Result<Directory::Leaf> Directory::load_leaf(uint64_t blkno) {
  if (!sb_.geo.ag_of(blkno)) {
    return make_status(Code::kCorruption, "directory {} points at leaf {} outside every AG", ino_,
                       blkno);
  }
  ASSIGN_OR_RETURN(journal::BufferRef buf, tm_.read(blkno));
  ASSIGN_OR_RETURN(DirLeaf leaf, DirLeaf::decode(buf->data(), {blkno, sb_.fs_tag()}));
  if (leaf.owner != ino_) {
    return make_status(Code::kCorruption, "directory leaf {} belongs to inode {}, not {}", blkno,
                       leaf.owner, ino_);
  }
  return Leaf{blkno, std::move(leaf), std::move(buf)};
}

Result<std::vector<Directory::Leaf>> Directory::load_chain(uint64_t head) {
  std::vector<Leaf> chain;
  for (uint64_t blk = head; blk != 0;) {
    if (chain.size() > (uint64_t{1} << 20)) {
      return make_status(Code::kCorruption, "directory {}: leaf chain from {} loops", ino_, head);
    }
    ASSIGN_OR_RETURN(Leaf l, load_leaf(blk));
    blk = l.leaf.next_leaf;
    chain.push_back(std::move(l));
  }
  return chain;
}

void Directory::store_leaf(journal::Handle& h, Leaf& l) {
  l.leaf.seq = h.transaction();
  l.leaf.owner = ino_;
  l.leaf.encode(l.buf->data(), {l.blkno, sb_.fs_tag()});
  h.dirty(l.buf);
}

Result<Directory::Leaf> Directory::new_leaf(journal::Handle& h, uint16_t depth) {
  ASSIGN_OR_RETURN(allocator::BlockRange r, alloc_.allocate(h, ino_, 1, 1));
  ++inode_.blocks;
  Leaf l{r.start, DirLeaf{.owner = ino_, .depth = depth}, tm_.create(r.start)};
  return l;
}

Status Directory::convert_to_hashed(journal::Handle& h, std::vector<DirEntry> entries) {
  // One leaf (the inline area is smaller than a leaf, so the entries fit) and a one-slot
  // table in logical block 0.
  ASSIGN_OR_RETURN(Leaf leaf, new_leaf(h, 0));
  leaf.leaf.entries = std::move(entries);
  store_leaf(h, leaf);
  inode_.flags = (inode_.flags & ~format::Inode::kInlineData) | format::Inode::kHashedDir;
  inode_.inline_data.clear();
  inode_.extent_root.clear();
  inode_.extent_depth = 0;
  inode_.dir_depth = 0;
  ASSIGN_OR_RETURN(allocator::BlockRange t, alloc_.allocate(h, ino_, 1, 1));
  ++inode_.blocks;
  RETURN_IF_ERROR(table_map().insert(h, format::Extent{0, t.start, 1, 0}));
  journal::BufferRef buf = tm_.create(t.start);
  DirIndex table{.seq = h.transaction(), .owner = ino_, .first_index = 0, .leaves = {leaf.blkno}};
  table.encode(buf->data(), {t.start, sb_.fs_tag()});
  h.dirty(buf);
  return Status::ok();
}

Status Directory::double_table(journal::Handle& h) {
  const uint64_t per_block = DirIndex::capacity(sb_.geo.block_size);
  const uint64_t old_size = uint64_t{1} << inode_.dir_depth;
  std::vector<uint64_t> pointers;
  pointers.reserve(old_size * 2);
  for (uint64_t i = 0; i < old_size; ++i) {
    ASSIGN_OR_RETURN(uint64_t p, table_pointer(i));
    pointers.push_back(p);
    pointers.push_back(p);
  }
  const uint64_t old_blocks = (old_size + per_block - 1) / per_block;
  const uint64_t new_blocks = (old_size * 2 + per_block - 1) / per_block;
  for (uint64_t b = old_blocks; b < new_blocks;) {
    ASSIGN_OR_RETURN(allocator::BlockRange r,
                     alloc_.allocate(h, ino_, static_cast<uint32_t>(new_blocks - b), 1));
    inode_.blocks += r.count;
    RETURN_IF_ERROR(table_map().insert(h, format::Extent{b, r.start, r.count, 0}));
    for (uint32_t k = 0; k < r.count; ++k) tm_.create(r.start + k);
    b += r.count;
  }
  ++inode_.dir_depth;
  for (uint64_t b = 0; b < new_blocks; ++b) {
    ASSIGN_OR_RETURN(Mapping m, table_map().lookup(b));
    ASSIGN_OR_RETURN(journal::BufferRef buf, tm_.read(m.physical));
    const uint64_t first = b * per_block;
    DirIndex t{.seq = h.transaction(), .owner = ino_, .first_index = static_cast<uint32_t>(first)};
    t.leaves.assign(pointers.begin() + static_cast<std::ptrdiff_t>(first),
                    pointers.begin() + static_cast<std::ptrdiff_t>(
                                           std::min<uint64_t>(first + per_block, pointers.size())));
    t.encode(buf->data(), {m.physical, sb_.fs_tag()});
    h.dirty(buf);
  }
  return Status::ok();
}

// Splits a leaf of local depth d < dir_depth by hash bit d (from the top): entries with
// the bit set move to a new leaf, which takes the upper half of the leaf's table slots.
// Returns false when the leaf cannot split (it is at the table's depth).
Result<bool> Directory::split_leaf(journal::Handle& h, Leaf& l, uint64_t index) {
  const uint32_t d = l.leaf.depth;
  const uint32_t depth = inode_.dir_depth;
  if (d >= depth) return false;
  ASSIGN_OR_RETURN(Leaf right, new_leaf(h, static_cast<uint16_t>(d + 1)));
  const uint32_t bit = 31 - d;
  std::vector<DirEntry> keep;
  for (auto& e : l.leaf.entries) {
    ((e.hash >> bit) & 1 ? right.leaf.entries : keep).push_back(std::move(e));
  }
  l.leaf.entries = std::move(keep);
  l.leaf.depth = static_cast<uint16_t>(d + 1);
  store_leaf(h, l);
  store_leaf(h, right);
  const uint64_t span = uint64_t{1} << (depth - d);
  const uint64_t first = (index >> (depth - d)) << (depth - d);
  RETURN_IF_ERROR(set_table_pointers(h, first + span / 2, span / 2, right.blkno));
  return true;
}

Status Directory::add_hashed(journal::Handle& h, const DirEntry& entry) {
  for (int attempt = 0; attempt < 64; ++attempt) {
    const uint64_t index = table_index(entry.hash);
    ASSIGN_OR_RETURN(uint64_t head, table_pointer(index));
    ASSIGN_OR_RETURN(std::vector<Leaf> chain, load_chain(head));
    for (const Leaf& l : chain) {
      for (const DirEntry& e : l.leaf.entries) {
        if (e.hash == entry.hash && e.name == entry.name) {
          return make_status(Code::kAlreadyExists, "\"{}\" exists", entry.name);
        }
      }
    }
    for (Leaf& l : chain) {
      auto entries = l.leaf.entries;
      entries.push_back(entry);
      if (!fits(entries, leaf_area())) continue;
      std::sort(entries.begin(), entries.end(), entry_less);
      l.leaf.entries = std::move(entries);
      store_leaf(h, l);
      return Status::ok();
    }
    ASSIGN_OR_RETURN(bool split, split_leaf(h, chain.front(), index));
    if (split) continue;
    if (inode_.dir_depth < kMaxDepth) {
      RETURN_IF_ERROR(double_table(h));
      continue;
    }
    // Every entry here shares the first kMaxDepth hash bits: chain an overflow leaf.
    ASSIGN_OR_RETURN(Leaf extra, new_leaf(h, chain.back().leaf.depth));
    extra.leaf.entries = {entry};
    store_leaf(h, extra);
    chain.back().leaf.next_leaf = extra.blkno;
    store_leaf(h, chain.back());
    return Status::ok();
  }
  return make_status(Code::kInternal, "directory {}: no room for \"{}\" after 64 splits", ino_,
                     entry.name);
}

// ---------------------------------------------------------------------------------------
// Operations

Result<std::optional<DirEntry>> Directory::lookup(std::string_view name) {
  RETURN_IF_ERROR(check_name(name));
  const uint32_t hash = format::dir_name_hash(name);
  if (inode_.flags & format::Inode::kInlineData) {
    ASSIGN_OR_RETURN(auto entries, inline_entries());
    for (auto& e : entries) {
      if (e.hash == hash && e.name == name) return std::optional<DirEntry>(std::move(e));
    }
    return std::optional<DirEntry>();
  }
  ASSIGN_OR_RETURN(uint64_t head, table_pointer(table_index(hash)));
  ASSIGN_OR_RETURN(std::vector<Leaf> chain, load_chain(head));
  for (Leaf& l : chain) {
    for (auto& e : l.leaf.entries) {
      if (e.hash == hash && e.name == name) return std::optional<DirEntry>(std::move(e));
    }
  }
  return std::optional<DirEntry>();
}

Status Directory::add(journal::Handle& h, const DirEntry& in) {
  RETURN_IF_ERROR(check_name(in.name));
  DirEntry entry = in;
  entry.hash = format::dir_name_hash(entry.name);
  if (inode_.flags & format::Inode::kInlineData) {
    ASSIGN_OR_RETURN(auto entries, inline_entries());
    for (const auto& e : entries) {
      if (e.hash == entry.hash && e.name == entry.name) {
        return make_status(Code::kAlreadyExists, "\"{}\" exists", entry.name);
      }
    }
    entries.push_back(entry);
    std::sort(entries.begin(), entries.end(), entry_less);
    if (fits(entries, inline_area())) {
      RETURN_IF_ERROR(store_inline(entries));
      ++inode_.dir_entries;
      return Status::ok();
    }
    entries.erase(std::find(entries.begin(), entries.end(), entry));
    RETURN_IF_ERROR(convert_to_hashed(h, std::move(entries)));
  }
  RETURN_IF_ERROR(add_hashed(h, entry));
  ++inode_.dir_entries;
  return Status::ok();
}

Result<DirEntry> Directory::remove(journal::Handle& h, std::string_view name) {
  RETURN_IF_ERROR(check_name(name));
  const uint32_t hash = format::dir_name_hash(name);
  auto not_found = [&] { return make_status(Code::kNotFound, "no entry \"{}\"", name); };
  if (inode_.flags & format::Inode::kInlineData) {
    ASSIGN_OR_RETURN(auto entries, inline_entries());
    auto it = std::find_if(entries.begin(), entries.end(),
                           [&](const DirEntry& e) { return e.hash == hash && e.name == name; });
    if (it == entries.end()) return not_found();
    DirEntry removed = std::move(*it);
    entries.erase(it);
    RETURN_IF_ERROR(store_inline(entries));
    --inode_.dir_entries;
    return removed;
  }
  ASSIGN_OR_RETURN(uint64_t head, table_pointer(table_index(hash)));
  ASSIGN_OR_RETURN(std::vector<Leaf> chain, load_chain(head));
  for (Leaf& l : chain) {
    auto& es = l.leaf.entries;
    auto it = std::find_if(es.begin(), es.end(),
                           [&](const DirEntry& e) { return e.hash == hash && e.name == name; });
    if (it == es.end()) continue;
    DirEntry removed = std::move(*it);
    es.erase(it);
    store_leaf(h, l);
    --inode_.dir_entries;
    return removed;
  }
  return not_found();
}

Result<std::vector<ListedEntry>> Directory::list(uint64_t cookie, size_t max) {
  std::vector<ListedEntry> out;
  auto emit = [&](std::vector<DirEntry>& sorted) {
    const auto cookies = cookies_of(sorted);
    for (size_t i = 0; i < sorted.size() && out.size() < max; ++i) {
      if (cookies[i] > cookie) out.push_back({cookies[i], std::move(sorted[i])});
    }
  };
  if (inode_.flags & format::Inode::kInlineData) {
    ASSIGN_OR_RETURN(auto entries, inline_entries());
    emit(entries);
    return out;
  }
  const uint32_t depth = inode_.dir_depth;
  const uint64_t size = uint64_t{1} << depth;
  // Start at the table slot of the cookie's hash: everything before it is done.
  uint64_t index = cookie >> 32 == 0 ? 0 : table_index(static_cast<uint32_t>(cookie >> 32));
  while (index < size && out.size() < max) {
    ASSIGN_OR_RETURN(uint64_t head, table_pointer(index));
    ASSIGN_OR_RETURN(std::vector<Leaf> chain, load_chain(head));
    std::vector<DirEntry> entries;
    for (Leaf& l : chain) {
      for (auto& e : l.leaf.entries) entries.push_back(std::move(e));
    }
    std::sort(entries.begin(), entries.end(), entry_less);
    emit(entries);
    // The leaf covers every slot sharing its top `depth` bits: skip to the next leaf.
    const uint32_t d = std::min<uint32_t>(chain.front().leaf.depth, depth);
    index = ((index >> (depth - d)) + 1) << (depth - d);
  }
  return out;
}

// Every leaf block once (a leaf serves all the table slots that share its top bits).
Result<std::vector<uint64_t>> Directory::leaf_blocks() {
  std::vector<uint64_t> out;
  const uint64_t size = uint64_t{1} << inode_.dir_depth;
  uint64_t index = 0;
  while (index < size) {
    ASSIGN_OR_RETURN(uint64_t head, table_pointer(index));
    ASSIGN_OR_RETURN(std::vector<Leaf> chain, load_chain(head));
    const uint32_t d = std::min<uint32_t>(chain.front().leaf.depth, inode_.dir_depth);
    for (const Leaf& l : chain) out.push_back(l.blkno);
    index = ((index >> (inode_.dir_depth - d)) + 1) << (inode_.dir_depth - d);
  }
  return out;
}

Result<std::vector<allocator::BlockRange>> Directory::owned_blocks() {
  std::vector<allocator::BlockRange> out;
  if (inode_.flags & format::Inode::kInlineData) return out;
  ASSIGN_OR_RETURN(auto leaves, leaf_blocks());
  for (uint64_t b : leaves) out.push_back({b, 1});
  ExtentTree table = table_map();
  ASSIGN_OR_RETURN(auto extents, table.extents(0, UINT64_MAX));
  for (const auto& e : extents) out.push_back({e.physical, e.length});
  ASSIGN_OR_RETURN(auto nodes, table.node_blocks());
  for (uint64_t b : nodes) out.push_back({b, 1});
  return out;
}

Status Directory::release_blocks(journal::Handle& h) {
  if (inode_.flags & format::Inode::kInlineData) return Status::ok();
  ASSIGN_OR_RETURN(auto leaves, leaf_blocks());
  for (uint64_t b : leaves) {
    RETURN_IF_ERROR(alloc_.free(h, {b, 1}, /*metadata=*/true));
    --inode_.blocks;
  }
  ASSIGN_OR_RETURN(auto table, table_map().remove(h, 0, UINT64_MAX));
  for (const auto& r : table) {
    RETURN_IF_ERROR(alloc_.free(h, r, /*metadata=*/true));
    inode_.blocks -= r.count;
  }
  inode_.flags = (inode_.flags & ~format::Inode::kHashedDir) | format::Inode::kInlineData;
  inode_.dir_depth = 0;
  inode_.extent_root.clear();
  inode_.extent_depth = 0;
  inode_.inline_data.clear();
  inode_.dir_entries = 0;
  return Status::ok();
}

}  // namespace sharedfs::fs
