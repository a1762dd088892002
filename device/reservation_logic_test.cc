// The reservation state machine against the NVMe Base Specification's tables: access
// rights by type and role, and what each command does to registrants, holder and
// generation.
#include "device/reservation_logic.h"

#include <gtest/gtest.h>

namespace sharedfs::device::internal {
namespace {

using RT = ReservationType;

const HostId kA = HostId::for_node(1, 1);
const HostId kB = HostId::for_node(1, 2);
const HostId kC = HostId::for_node(1, 3);  // never registers
constexpr ReservationKey kKeyA = 0xA;
constexpr ReservationKey kKeyB = 0xB;

class ReservationLogicTest : public ::testing::Test {
 protected:
  ReservationState s{};

  Status reg(const HostId& h, ReservationKey k) {
    return apply_register(s, h, RegisterAction::kRegister, 0, k, false);
  }
  Status acquire(const HostId& h, ReservationKey k, RT t) {
    return apply_acquire(s, h, AcquireAction::kAcquire, k, 0, t);
  }
  Status preempt(const HostId& h, ReservationKey k, ReservationKey victim, RT t,
                 AcquireAction a = AcquireAction::kPreempt) {
    return apply_acquire(s, h, a, k, victim, t);
  }
  ReservationReport report() const { return make_report(s); }
};

// NVMe "Command Behavior in the Presence of a Reservation": for each type, may the
// holder / a registrant that does not hold / a non-registrant read and write?
struct AccessRow {
  RT type;
  bool holder_read, holder_write, reg_read, reg_write, other_read, other_write;
};

class AccessTable : public ReservationLogicTest, public ::testing::WithParamInterface<AccessRow> {};

TEST_P(AccessTable, MatchesSpecification) {
  const AccessRow row = GetParam();
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, row.type));
  EXPECT_EQ(may_read(s, kA), row.holder_read);
  EXPECT_EQ(may_write(s, kA), row.holder_write);
  EXPECT_EQ(may_read(s, kB), row.reg_read);
  EXPECT_EQ(may_write(s, kB), row.reg_write);
  EXPECT_EQ(may_read(s, kC), row.other_read);
  EXPECT_EQ(may_write(s, kC), row.other_write);
}

// For the all-registrants types every registrant is a holder.
INSTANTIATE_TEST_SUITE_P(
    NvmeTypes, AccessTable,
    ::testing::Values(
        AccessRow{RT::kWriteExclusive, true, true, true, false, true, false},
        AccessRow{RT::kExclusiveAccess, true, true, false, false, false, false},
        AccessRow{RT::kWriteExclusiveRegistrantsOnly, true, true, true, true, true, false},
        AccessRow{RT::kExclusiveAccessRegistrantsOnly, true, true, true, true, false, false},
        AccessRow{RT::kWriteExclusiveAllRegistrants, true, true, true, true, true, false},
        AccessRow{RT::kExclusiveAccessAllRegistrants, true, true, true, true, false, false}));

TEST_F(ReservationLogicTest, NoReservationAllowsEveryone) {
  EXPECT_TRUE(may_read(s, kC));
  EXPECT_TRUE(may_write(s, kC));
  ASSERT_TRUE(reg(kA, kKeyA));
  EXPECT_TRUE(may_write(s, kC));
}

TEST_F(ReservationLogicTest, RegisterBumpsGenerationAndIsIdempotentWithSameKey) {
  EXPECT_EQ(report().generation, 0u);
  ASSERT_TRUE(reg(kA, kKeyA));
  EXPECT_EQ(report().generation, 1u);
  EXPECT_TRUE(reg(kA, kKeyA));  // same key: success, no change
  EXPECT_EQ(report().generation, 1u);
  EXPECT_EQ(reg(kA, kKeyB).code(), Code::kReservationConflict);
  EXPECT_EQ(reg(kB, 0).code(), Code::kInvalidArgument);
  EXPECT_EQ(apply_register(s, HostId{}, RegisterAction::kRegister, 0, 5, false).code(),
            Code::kInvalidArgument);
  ASSERT_EQ(report().registrants.size(), 1u);
  EXPECT_EQ(report().registrants[0].key, kKeyA);
  EXPECT_EQ(report().registrants[0].host, kA);
}

TEST_F(ReservationLogicTest, UnregisterNeedsTheCurrentKeyUnlessIgnored) {
  ASSERT_TRUE(reg(kA, kKeyA));
  EXPECT_EQ(apply_register(s, kA, RegisterAction::kUnregister, kKeyB, 0, false).code(),
            Code::kReservationConflict);
  EXPECT_EQ(apply_register(s, kB, RegisterAction::kUnregister, kKeyB, 0, false).code(),
            Code::kReservationConflict);
  EXPECT_TRUE(apply_register(s, kA, RegisterAction::kUnregister, 0, 0, true));
  EXPECT_TRUE(report().registrants.empty());
  EXPECT_EQ(report().generation, 2u);
}

TEST_F(ReservationLogicTest, UnregisterOfHolderReleasesSingleHolderReservation) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  ASSERT_TRUE(apply_register(s, kA, RegisterAction::kUnregister, kKeyA, 0, false));
  EXPECT_EQ(report().type, RT::kNone);
  EXPECT_EQ(report().holder(), nullptr);
}

TEST_F(ReservationLogicTest, AllRegistrantsReservationLastsUntilLastRegistrantLeaves) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusiveAllRegistrants));
  EXPECT_TRUE(report().find_key(kKeyB)->holds_reservation);
  ASSERT_TRUE(apply_register(s, kA, RegisterAction::kUnregister, kKeyA, 0, false));
  EXPECT_EQ(report().type, RT::kWriteExclusiveAllRegistrants);
  ASSERT_TRUE(apply_register(s, kB, RegisterAction::kUnregister, kKeyB, 0, false));
  EXPECT_EQ(report().type, RT::kNone);
}

TEST_F(ReservationLogicTest, ReplaceKeepsHolderAndBumpsGeneration) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusive));
  const uint32_t gen = report().generation;
  EXPECT_EQ(apply_register(s, kA, RegisterAction::kReplace, kKeyB, 0x77, false).code(),
            Code::kReservationConflict);
  ASSERT_TRUE(apply_register(s, kA, RegisterAction::kReplace, kKeyA, 0x77, false));
  EXPECT_EQ(report().generation, gen + 1);
  ASSERT_NE(report().find_key(0x77), nullptr);
  EXPECT_TRUE(report().find_key(0x77)->holds_reservation);
  EXPECT_TRUE(apply_register(s, kA, RegisterAction::kReplace, 0, 0x78, true));
  EXPECT_NE(report().find_key(0x78), nullptr);
}

TEST_F(ReservationLogicTest, AcquireRules) {
  EXPECT_EQ(acquire(kA, kKeyA, RT::kWriteExclusive).code(), Code::kReservationConflict);
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  EXPECT_EQ(acquire(kA, kKeyB, RT::kWriteExclusive).code(), Code::kReservationConflict);
  const uint32_t gen = report().generation;
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  EXPECT_EQ(report().generation, gen);  // acquire does not change the generation
  EXPECT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusiveRegistrantsOnly));  // again: ok
  EXPECT_EQ(acquire(kA, kKeyA, RT::kExclusiveAccess).code(), Code::kReservationConflict);
  EXPECT_EQ(acquire(kB, kKeyB, RT::kWriteExclusiveRegistrantsOnly).code(),
            Code::kReservationConflict);
  EXPECT_EQ(report().holder()->host, kA);
  EXPECT_EQ(acquire(kA, kKeyA, RT::kNone).code(), Code::kInvalidArgument);
}

TEST_F(ReservationLogicTest, PreemptOfHolderMovesReservationAndUnregistersVictim) {
  for (auto action : {AcquireAction::kPreempt, AcquireAction::kPreemptAndAbort}) {
    s = {};
    ASSERT_TRUE(reg(kA, kKeyA));
    ASSERT_TRUE(reg(kB, kKeyB));
    ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusiveRegistrantsOnly));
    const uint32_t gen = report().generation;
    ASSERT_TRUE(preempt(kB, kKeyB, kKeyA, RT::kExclusiveAccessRegistrantsOnly, action));
    auto r = report();
    EXPECT_EQ(r.generation, gen + 1);
    EXPECT_EQ(r.type, RT::kExclusiveAccessRegistrantsOnly);
    EXPECT_EQ(r.find_key(kKeyA), nullptr);
    ASSERT_NE(r.holder(), nullptr);
    EXPECT_EQ(r.holder()->host, kB);
    EXPECT_FALSE(may_write(s, kA));
  }
}

TEST_F(ReservationLogicTest, PreemptOfNonHolderOnlyUnregisters) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusiveRegistrantsOnly));
  ASSERT_TRUE(preempt(kA, kKeyA, kKeyB, RT::kWriteExclusiveRegistrantsOnly,
                      AcquireAction::kPreemptAndAbort));
  auto r = report();
  EXPECT_EQ(r.find_key(kKeyB), nullptr);
  EXPECT_EQ(r.holder()->host, kA);
  EXPECT_EQ(r.type, RT::kWriteExclusiveRegistrantsOnly);
  EXPECT_FALSE(may_write(s, kB));
  EXPECT_TRUE(may_read(s, kB));  // WERO: a non-registrant may still read
}

TEST_F(ReservationLogicTest, PreemptErrors) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusive));
  EXPECT_EQ(preempt(kB, kKeyB, 0x99, RT::kWriteExclusive).code(), Code::kReservationConflict);
  EXPECT_EQ(preempt(kB, kKeyB, 0, RT::kWriteExclusive).code(), Code::kInvalidArgument);
  EXPECT_EQ(preempt(kC, kKeyB, kKeyA, RT::kWriteExclusive).code(), Code::kReservationConflict);
  EXPECT_EQ(preempt(kB, kKeyA, kKeyA, RT::kWriteExclusive).code(), Code::kReservationConflict);
}

TEST_F(ReservationLogicTest, PreemptWithoutReservationUnregistersVictim) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(preempt(kA, kKeyA, kKeyB, RT::kWriteExclusive));
  EXPECT_EQ(report().find_key(kKeyB), nullptr);
  EXPECT_EQ(report().type, RT::kNone);  // nothing was held, nothing is taken
}

TEST_F(ReservationLogicTest, PreemptAllRegistrantsWithZeroKeyTakesOver) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kExclusiveAccessAllRegistrants));
  ASSERT_TRUE(preempt(kB, kKeyB, 0, RT::kWriteExclusive));
  auto r = report();
  ASSERT_EQ(r.registrants.size(), 1u);
  EXPECT_EQ(r.type, RT::kWriteExclusive);
  EXPECT_EQ(r.holder()->host, kB);
}

TEST_F(ReservationLogicTest, PreemptAllRegistrantsWithKeyOnlyUnregisters) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusiveAllRegistrants));
  ASSERT_TRUE(preempt(kB, kKeyB, kKeyA, RT::kWriteExclusive));
  auto r = report();
  EXPECT_EQ(r.find_key(kKeyA), nullptr);
  EXPECT_EQ(r.type, RT::kWriteExclusiveAllRegistrants);
  EXPECT_TRUE(r.find_key(kKeyB)->holds_reservation);
}

TEST_F(ReservationLogicTest, ReleaseRules) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  EXPECT_TRUE(apply_release(s, kA, ReleaseAction::kRelease, kKeyA, RT::kWriteExclusive));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kWriteExclusive));
  // A registrant that does not hold: success, no effect.
  EXPECT_TRUE(apply_release(s, kB, ReleaseAction::kRelease, kKeyB, RT::kWriteExclusive));
  EXPECT_EQ(report().type, RT::kWriteExclusive);
  EXPECT_EQ(apply_release(s, kA, ReleaseAction::kRelease, kKeyB, RT::kWriteExclusive).code(),
            Code::kReservationConflict);
  EXPECT_EQ(apply_release(s, kA, ReleaseAction::kRelease, kKeyA, RT::kExclusiveAccess).code(),
            Code::kInvalidArgument);
  const uint32_t gen = report().generation;
  EXPECT_TRUE(apply_release(s, kA, ReleaseAction::kRelease, kKeyA, RT::kWriteExclusive));
  EXPECT_EQ(report().type, RT::kNone);
  EXPECT_EQ(report().registrants.size(), 2u);  // release keeps registrations
  EXPECT_EQ(report().generation, gen);
}

TEST_F(ReservationLogicTest, ClearRemovesEverything) {
  ASSERT_TRUE(reg(kA, kKeyA));
  ASSERT_TRUE(reg(kB, kKeyB));
  ASSERT_TRUE(acquire(kA, kKeyA, RT::kExclusiveAccess));
  EXPECT_EQ(apply_release(s, kC, ReleaseAction::kClear, kKeyA, RT::kNone).code(),
            Code::kReservationConflict);
  const uint32_t gen = report().generation;
  ASSERT_TRUE(apply_release(s, kB, ReleaseAction::kClear, kKeyB, RT::kNone));
  EXPECT_EQ(report().type, RT::kNone);
  EXPECT_TRUE(report().registrants.empty());
  EXPECT_EQ(report().generation, gen + 1);
}

TEST_F(ReservationLogicTest, RegistrantTableFull) {
  for (uint32_t i = 0; i < kMaxRegistrants; ++i) {
    ASSERT_TRUE(reg(HostId::for_node(9, i), 100 + i));
  }
  EXPECT_EQ(reg(HostId::for_node(9, 999), 5).code(), Code::kNoSpace);
}

}  // namespace
}  // namespace sharedfs::device::internal
