// Block and inode allocation over allocation groups; see allocator.h and docs/allocator.md.
#include "allocator/allocator.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <map>
#include <mutex>

namespace sharedfs::allocator {

using journal::BufferRef;
using journal::Handle;

struct Allocator::AgState {
  // Orders this node's threads in the AG (other nodes are kept out by the AG's cluster
  // lock, taken by the file system). Held across the whole read-modify-dirty of the AG's
  // header and bitmap blocks, and never together with another AG's.
  std::mutex mu;
  // Equal to the AG header's free_blocks / inode_count. Written only under `mu` (refreshed
  // from the header at every locked visit); read without it as a hint for choosing AGs
  // and by usage().
  std::atomic<uint64_t> free_blocks{0};
  std::atomic<uint64_t> inodes{0};
  // AG-relative bit just after this node's last allocation here: where a search without a
  // goal in this AG starts. GUARDED_BY(mu).
  uint64_t cursor = 0;
  // Busy extents (as ext4 calls them): bits freed by a transaction that has not committed
  // yet, as first bit -> (end bit, transaction). They are not handed out again until that
  // transaction is durable: data written into a reused block goes to the device at once,
  // and a crash before the commit would leave it inside the file (or metadata block) that
  // still owns the block on disk. GUARDED_BY(mu).
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> busy;
};

struct Allocator::HeaderRef {
  BufferRef buf;
  format::AgHeader hdr;
};

namespace {

uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// First bit equal to `value` in [from, to) of one bitmap block's bits, or `to`.
uint64_t scan(const std::vector<uint8_t>& bits, uint64_t from, uint64_t to, bool value) {
  uint64_t i = from;
  while (i < to) {
    if (i % 64 == 0 && to - i >= 64) {
      uint64_t w = load_le64(&bits[i / 8]);
      if (!value) w = ~w;
      if (w == 0) {
        i += 64;
        continue;
      }
      return i + static_cast<uint64_t>(std::countr_zero(w));
    }
    if ((((bits[i / 8] >> (i % 8)) & 1) != 0) == value) return i;
    ++i;
  }
  return to;
}

// The bitmap of one AG, addressed by AG-relative bit, its blocks read (and validated)
// through the transaction manager on first use. Valid only while the AG's lock is held.
// Changes stay in the decoded copies until write_back(), so a failed read part-way leaves
// every cached Buffer as it was.
class AgBitmap {
 public:
  AgBitmap(journal::TransactionManager& tm, const format::Geometry& g, uint32_t tag, uint32_t ag)
      : tm_(tm), g_(g), tag_(tag), ag_(ag), per_block_(g.bits_per_bitmap_block()) {}

  // First bit equal to `value` in [from, to), or `to`.
  Result<uint64_t> find(uint64_t from, uint64_t to, bool value) {
    uint64_t bit = from;
    while (bit < to) {
      const auto index = static_cast<uint32_t>(bit / per_block_);
      ASSIGN_OR_RETURN(Loaded * b, load(index));
      const uint64_t base = uint64_t{index} * per_block_;
      const uint64_t stop = std::min(to, base + per_block_);
      const uint64_t hit = scan(b->bm.bits, bit - base, stop - base, value);
      if (hit < stop - base) return base + hit;
      bit = stop;
    }
    return to;
  }

  // Sets bits [from, from + n) to `value`; their blocks must have been read by find().
  void set(uint64_t from, uint64_t n, bool value) {
    for (uint64_t bit = from; bit < from + n; ++bit) {
      auto it = blocks_.find(static_cast<uint32_t>(bit / per_block_));
      SHAREDFS_CHECK(it != blocks_.end(), "bitmap block changed before it was read");
      it->second.bm.set(bit % per_block_, value);
      it->second.changed = true;
    }
  }

  // Encodes the changed blocks into their Buffers and adds them to h's transaction.
  void write_back(Handle& h) {
    for (auto& [index, b] : blocks_) {
      if (!b.changed) continue;
      b.bm.seq = h.transaction();
      b.bm.encode(b.buf->data(), {b.buf->blkno(), tag_});
      h.dirty(b.buf);
    }
  }

 private:
  struct Loaded {
    BufferRef buf;
    format::BitmapBlock bm;
    bool changed = false;
  };

  Result<Loaded*> load(uint32_t index) {
    auto it = blocks_.find(index);
    if (it != blocks_.end()) return &it->second;
    const uint64_t blkno = g_.bitmap_blkno(ag_, index);
    ASSIGN_OR_RETURN(BufferRef buf, tm_.read(blkno));
    auto bm = format::BitmapBlock::decode(buf->data(), {blkno, tag_});
    if (!bm) {
      return bm.status().with_context(fmt::format("bitmap block {} of AG {}", index, ag_));
    }
    if (bm->ag_index != ag_ || bm->index != index || bm->first_bit != index * per_block_) {
      return make_status(Code::kCorruption,
                         "bitmap block {} (block {}) of AG {} is labelled AG {} index {} first "
                         "bit {}",
                         index, blkno, ag_, bm->ag_index, bm->index, bm->first_bit);
    }
    Loaded& l = blocks_[index];
    l.buf = std::move(buf);
    l.bm = std::move(*bm);
    return &l;
  }

  journal::TransactionManager& tm_;
  const format::Geometry& g_;
  const uint32_t tag_;
  const uint32_t ag_;
  const uint64_t per_block_;
  std::map<uint32_t, Loaded> blocks_;  // by index among the AG's bitmap blocks
};

struct Run {
  uint64_t bit = 0;
  uint64_t len = 0;
};

// The first run of at least `min` free bits that starts in [from, to_start), extended up
// to `want` bits but not past `limit` (the AG's end).
Result<std::optional<Run>> find_run(AgBitmap& bm, uint64_t from, uint64_t to_start, uint64_t limit,
                                    uint32_t want, uint32_t min) {
  uint64_t pos = from;
  while (pos < to_start) {
    ASSIGN_OR_RETURN(const uint64_t f, bm.find(pos, to_start, false));
    if (f >= to_start) break;
    const uint64_t cap = std::min(limit, f + want);
    ASSIGN_OR_RETURN(const uint64_t e, bm.find(f, cap, true));
    if (e - f >= min) return std::optional<Run>(Run{f, e - f});
    pos = e;  // bit e is in use, or e is the AG's end
  }
  return std::optional<Run>();
}

}  // namespace

Allocator::Allocator(journal::TransactionManager& tm, const format::Superblock& sb,
                     uint32_t home_slot)
    : tm_(tm),
      sb_(sb),
      geo_(sb_.geo),
      tag_(sb_.fs_tag()),
      home_slot_(home_slot),
      ags_(std::make_unique<AgState[]>(sb_.geo.ag_count)) {}

Allocator::~Allocator() = default;

Result<std::unique_ptr<Allocator>> Allocator::open(journal::TransactionManager& tm,
                                                   const format::Superblock& sb,
                                                   uint32_t home_slot) {
  if (sb.geo.ag_count == 0 || sb.geo.slots == 0) {
    return make_status(Code::kCorruption, "the superblock describes no allocation groups");
  }
  std::unique_ptr<Allocator> a(new Allocator(tm, sb, home_slot));
  const format::Geometry& g = a->geo_;
  const uint32_t home = home_slot % g.slots;
  for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
    ASSIGN_OR_RETURN(HeaderRef ref, a->read_header(ag));
    AgState& st = a->ags_[ag];
    st.free_blocks = ref.hdr.free_blocks;
    st.inodes = ref.hdr.inode_count;
    st.cursor = 1 + uint64_t{g.bitmap_blocks(ag)};
    a->total_blocks_ += g.ag_size(ag) - 1 - g.bitmap_blocks(ag);
    if (ag % g.slots == home) a->order_.push_back(ag);
  }
  for (uint32_t ag = 0; ag < g.ag_count; ++ag) {
    if (ag % g.slots != home) a->order_.push_back(ag);
  }
  // A node whose slot has no AG of its own (fewer AGs than slots) still spreads out.
  a->current_ag_ = home < g.ag_count ? home : home_slot % g.ag_count;
  return a;
}

Result<Allocator::HeaderRef> Allocator::read_header(uint32_t ag) {
  const uint64_t blkno = geo_.ag_header_blkno(ag);
  ASSIGN_OR_RETURN(BufferRef buf, tm_.read(blkno));
  auto hdr = format::AgHeader::decode(buf->data(), {blkno, tag_});
  if (!hdr) return hdr.status().with_context(fmt::format("AG header {}", ag));
  const uint64_t size = geo_.ag_size(ag);
  const uint32_t nbitmap = geo_.bitmap_blocks(ag);
  if (hdr->ag_index != ag || hdr->ag_blocks != size || hdr->bitmap_blocks != nbitmap ||
      hdr->free_blocks > size - 1 - nbitmap) {
    return make_status(Code::kCorruption,
                       "AG header {} (block {}) describes AG {} of {} blocks with {} bitmap "
                       "blocks and {} free; expected AG {} of {} blocks with {} bitmap blocks",
                       ag, blkno, hdr->ag_index, hdr->ag_blocks, hdr->bitmap_blocks,
                       hdr->free_blocks, ag, size, nbitmap);
  }
  return HeaderRef{std::move(buf), std::move(*hdr)};
}

void Allocator::write_header(Handle& h, uint32_t ag, HeaderRef& ref) {
  ref.hdr.seq = h.transaction();
  ref.hdr.encode(ref.buf->data(), {ref.buf->blkno(), tag_});
  h.dirty(ref.buf);
  ags_[ag].free_blocks = ref.hdr.free_blocks;
  ags_[ag].inodes = ref.hdr.inode_count;
}

Result<std::optional<BlockRange>> Allocator::allocate_in(Handle& h, uint32_t ag,
                                                         std::optional<uint64_t> from_bit,
                                                         uint32_t want, uint32_t min, bool inode) {
  AgState& st = ags_[ag];
  std::lock_guard lock(st.mu);
  ASSIGN_OR_RETURN(HeaderRef ref, read_header(ag));
  st.free_blocks = ref.hdr.free_blocks;
  st.inodes = ref.hdr.inode_count;
  if (ref.hdr.free_blocks < min) return std::optional<BlockRange>();

  const uint64_t first = 1 + uint64_t{geo_.bitmap_blocks(ag)};
  const uint64_t size = geo_.ag_size(ag);
  uint64_t start = from_bit.value_or(st.cursor);
  if (start < first || start >= size) start = first;
  AgBitmap bm(tm_, geo_, tag_, ag);
  prune_busy_locked(st);
  // A free run, clipped at the first busy extent inside it; past busy extents that leave
  // less than `min`, the search goes on after them.
  auto search = [&](uint64_t from, uint64_t to) -> Result<std::optional<Run>> {
    uint64_t pos = from;
    while (pos < to) {
      ASSIGN_OR_RETURN(auto r, find_run(bm, pos, to, size, want, min));
      if (!r) return r;
      auto it = st.busy.upper_bound(r->bit + r->len - 1);
      const uint64_t run_end = r->bit + r->len;
      uint64_t clip_at = run_end, resume = run_end;
      // Busy extents starting before the run's end: the last one starting at or before
      // the run start may still cover it.
      while (it != st.busy.begin()) {
        --it;
        if (it->second.first <= r->bit) break;  // ends before the run
        clip_at = std::max(it->first, r->bit);
        resume = it->second.first;
      }
      if (clip_at == run_end) return r;
      if (clip_at - r->bit >= min) return std::optional<Run>(Run{r->bit, clip_at - r->bit});
      pos = std::max(resume, r->bit + 1);
    }
    return std::optional<Run>();
  };
  ASSIGN_OR_RETURN(auto run, search(start, size));
  if (!run && start > first) {
    ASSIGN_OR_RETURN(run, search(first, start));
  }
  if (!run) return std::optional<BlockRange>();
  if (ref.hdr.free_blocks < run->len) {
    return make_status(Code::kCorruption,
                       "AG header {} (block {}) counts {} free blocks but the bitmap has a free "
                       "run of {}",
                       ag, ref.buf->blkno(), ref.hdr.free_blocks, run->len);
  }
  bm.set(run->bit, run->len, true);
  ref.hdr.free_blocks -= run->len;
  if (inode) ++ref.hdr.inode_count;
  bm.write_back(h);
  write_header(h, ag, ref);
  st.cursor = run->bit + run->len;
  return std::optional<BlockRange>(
      BlockRange{geo_.ag_header_blkno(ag) + run->bit, static_cast<uint32_t>(run->len)});
}

Result<BlockRange> Allocator::allocate_any(Handle& h, uint64_t goal, uint32_t want, uint32_t min,
                                           bool inode) {
  if (min == 0 || want < min) {
    return make_status(Code::kInvalidArgument,
                       "allocation of {} blocks, at least {}: need 1 <= min <= want", want, min);
  }
  std::vector<bool> tried(geo_.ag_count, false);
  if (gate_) {
    for (uint32_t ag = 0; ag < geo_.ag_count; ++ag) tried[ag] = !gate_(ag);
  }
  auto attempt = [&](uint32_t ag,
                     std::optional<uint64_t> bit) -> Result<std::optional<BlockRange>> {
    tried[ag] = true;
    return allocate_in(h, ag, bit, want, min, inode);
  };

  // 1. The goal's AG from the goal, or (no goal) the node's current AG from its cursor.
  const std::optional<uint32_t> goal_ag = goal != 0 ? geo_.ag_of(goal) : std::nullopt;
  const uint32_t first_ag = goal_ag ? *goal_ag : current_ag_.load();
  if (!tried[first_ag] && ags_[first_ag].free_blocks >= min) {
    std::optional<uint64_t> bit;
    if (goal_ag) bit = goal - geo_.ag_header_blkno(*goal_ag);
    ASSIGN_OR_RETURN(auto r, attempt(first_ag, bit));
    if (r) return *r;
  }
  // 2. The home AGs, then every other AG: first those whose count says `want` fits, then
  //    those where `min` may. An AG whose count is below the need is not even read.
  for (const uint64_t need : {uint64_t{want}, uint64_t{min}}) {
    for (const uint32_t ag : order_) {
      if (tried[ag] || ags_[ag].free_blocks < need) continue;
      ASSIGN_OR_RETURN(auto r, attempt(ag, std::nullopt));
      if (!r) continue;
      if (!goal_ag) current_ag_ = ag;
      return *r;
    }
  }
  return make_status(Code::kNoSpace,
                     "no allocation group{} has {} contiguous free blocks ({} free in all)",
                     gate_ ? " this change holds" : "", min, usage().free_blocks);
}

Result<BlockRange> Allocator::allocate(Handle& h, uint64_t goal, uint32_t want, uint32_t min) {
  return allocate_any(h, goal, want, min, /*inode=*/false);
}

Result<uint64_t> Allocator::allocate_inode(Handle& h, uint64_t goal) {
  ASSIGN_OR_RETURN(const BlockRange r, allocate_any(h, goal, 1, 1, /*inode=*/true));
  return r.start;
}

Status Allocator::free_range(Handle& h, BlockRange r, bool metadata, bool inode) {
  if (r.count == 0) {
    return make_status(Code::kInvalidArgument, "freeing 0 blocks at block {}", r.start);
  }
  const uint64_t last = r.start + (r.count - 1);
  const std::optional<uint32_t> ag = last < r.start ? std::nullopt : geo_.ag_of(r.start);
  if (!ag || r.start < geo_.ag_first_data_block(*ag) ||
      last >= geo_.ag_header_blkno(*ag) + geo_.ag_size(*ag)) {
    return make_status(Code::kCorruption,
                       "freeing {} {}..{}: not inside one allocation group's data area",
                       inode ? "inode block" : "blocks", r.start, last);
  }
  if (gate_ && !gate_(*ag)) {
    return make_status(Code::kInternal,
                       "freeing {} {}..{} in allocation group {}, whose lock this change does "
                       "not hold",
                       inode ? "inode block" : "blocks", r.start, last, *ag);
  }
  AgState& st = ags_[*ag];
  std::lock_guard lock(st.mu);
  ASSIGN_OR_RETURN(HeaderRef ref, read_header(*ag));
  st.free_blocks = ref.hdr.free_blocks;
  st.inodes = ref.hdr.inode_count;
  const uint64_t head = geo_.ag_header_blkno(*ag);
  const uint64_t from = r.start - head;
  const uint64_t to = from + r.count;
  AgBitmap bm(tm_, geo_, tag_, *ag);
  ASSIGN_OR_RETURN(const uint64_t clear, bm.find(from, to, false));
  if (clear < to) {
    ASSIGN_OR_RETURN(const uint64_t clear_end, bm.find(clear, to, true));
    return make_status(Code::kCorruption, "freeing blocks {}..{}: blocks {}..{} are already free",
                       r.start, last, head + clear, head + clear_end - 1);
  }
  const uint64_t data_blocks = geo_.ag_size(*ag) - 1 - geo_.bitmap_blocks(*ag);
  if (ref.hdr.free_blocks + r.count > data_blocks) {
    return make_status(Code::kCorruption,
                       "AG header {} (block {}) counts {} free blocks, but blocks {}..{} are "
                       "allocated and the AG has {} data blocks",
                       *ag, head, ref.hdr.free_blocks, r.start, last, data_blocks);
  }
  if (inode && ref.hdr.inode_count == 0) {
    return make_status(Code::kCorruption,
                       "freeing inode {}: AG header {} (block {}) counts no inodes", r.start, *ag,
                       head);
  }
  bm.set(from, r.count, false);
  st.busy[from] = {to, h.transaction()};
  ref.hdr.free_blocks += r.count;
  if (inode) --ref.hdr.inode_count;
  bm.write_back(h);
  write_header(h, *ag, ref);
  if (metadata) {
    for (uint64_t b = r.start; b <= last; ++b) h.revoke(b);
  }
  return Status::ok();
}

Status Allocator::free(Handle& h, BlockRange r, bool metadata) {
  return free_range(h, r, metadata, /*inode=*/false);
}

Status Allocator::free_inode(Handle& h, uint64_t ino) {
  return free_range(h, {ino, 1}, /*metadata=*/true, /*inode=*/true);
}

void Allocator::prune_busy_locked(AgState& st) {
  if (st.busy.empty()) return;
  const uint64_t committed = tm_.last_committed();
  std::erase_if(st.busy, [&](const auto& kv) { return kv.second.second <= committed; });
}

uint64_t Allocator::busy_blocks() {
  uint64_t n = 0;
  for (uint32_t ag = 0; ag < geo_.ag_count; ++ag) {
    AgState& st = ags_[ag];
    std::lock_guard lock(st.mu);
    prune_busy_locked(st);
    for (const auto& [from, v] : st.busy) n += v.first - from;
  }
  return n;
}

std::optional<uint32_t> Allocator::ag_of(uint64_t blkno) const { return geo_.ag_of(blkno); }

uint32_t Allocator::ag_count() const { return geo_.ag_count; }

uint64_t Allocator::header_block(uint32_t ag) const { return geo_.ag_header_blkno(ag); }

std::vector<uint32_t> Allocator::pick_ags(uint64_t blocks) {
  const uint32_t current = current_ag_.load();
  if (ags_[current].free_blocks >= blocks) return {current};
  for (const uint32_t ag : order_) {
    if (ags_[ag].free_blocks >= blocks) {
      current_ag_ = ag;
      return {ag};
    }
  }
  std::vector<uint32_t> out;
  uint64_t room = 0;
  for (const uint32_t ag : order_) {
    if (ags_[ag].free_blocks == 0) continue;
    out.push_back(ag);
    room += ags_[ag].free_blocks;
    if (room >= blocks) break;
  }
  if (out.empty()) return {current};  // full: the allocation will say so
  current_ag_ = out.front();
  return out;
}

AgCounts Allocator::counts(uint32_t ag) const {
  SHAREDFS_CHECK(ag < geo_.ag_count, "AG index out of range");
  return AgCounts{ags_[ag].free_blocks.load(), ags_[ag].inodes.load()};
}

namespace {
constexpr uint32_t kAgValueMagic = 0x47414653;  // "SFAG" little-endian

void put_le(AgValueBlock& b, size_t at, uint64_t v, size_t n) {
  for (size_t i = 0; i < n; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get_le(const AgValueBlock& b, size_t at, size_t n) {
  uint64_t v = 0;
  for (size_t i = n; i-- > 0;) v = (v << 8) | b[at + i];
  return v;
}
}  // namespace

AgValueBlock encode_ag_counts(uint32_t fs_tag, uint32_t ag, const AgCounts& counts) {
  AgValueBlock b{};
  put_le(b, 0, kAgValueMagic, 4);
  put_le(b, 4, ag, 4);
  put_le(b, 8, counts.free_blocks, 8);
  put_le(b, 16, counts.inodes, 8);
  put_le(b, 24, fs_tag, 4);
  return b;
}

std::optional<AgCounts> decode_ag_counts(uint32_t fs_tag, uint32_t ag, const AgValueBlock& b) {
  if (get_le(b, 0, 4) != kAgValueMagic || get_le(b, 4, 4) != ag || get_le(b, 24, 4) != fs_tag ||
      get_le(b, 28, 4) != 0) {
    return std::nullopt;
  }
  return AgCounts{get_le(b, 8, 8), get_le(b, 16, 8)};
}

void Allocator::note_counts(uint32_t ag, uint64_t free_blocks, uint64_t inodes) {
  SHAREDFS_CHECK(ag < geo_.ag_count, "AG index out of range");
  ags_[ag].free_blocks = free_blocks;
  ags_[ag].inodes = inodes;
}

Usage Allocator::usage() const {
  Usage u{.total_blocks = total_blocks_};
  for (uint32_t ag = 0; ag < geo_.ag_count; ++ag) {
    u.free_blocks += ags_[ag].free_blocks.load();
    u.inodes += ags_[ag].inodes.load();
  }
  return u;
}

}  // namespace sharedfs::allocator
