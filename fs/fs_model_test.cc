// Model test: 20,000 random operations on the FileSystem and on a plain in-memory model
// side by side (fs/fs_model_driver.h). Every operation's outcome (errno) must match, file
// contents must match on every read, the whole tree is compared every 1,000 operations
// and after each remount.
#include <gtest/gtest.h>

#include "fs/fs_model_driver.h"
#include "fs/fs_test_fixture.h"

namespace sharedfs::fs {
namespace {

class ModelTest : public testing::FsTest {
 protected:
  uint64_t image_bytes() const override { return 512 * kMiB; }
};

TEST_F(ModelTest, TwentyThousandRandomOperationsMatchTheModel) {
  testing::ModelDriver model(7, caller_);
  model.make_tops(*fs_);
  ASSERT_FALSE(HasFatalFailure());
  const int kOps = 20000;
  for (int i = 1; i <= kOps; ++i) {
    model.step(*fs_, i);
    if (i % 1000 == 0) model.compare(*fs_, i);
    if (i % 5000 == 0) {
      remount();
      model.compare(*fs_, i);
    }
    if (HasFatalFailure()) return;
  }
  for (int k = 0; k < testing::ModelDriver::kKinds; ++k) EXPECT_GT(model.count(k), 2000);
}

}  // namespace
}  // namespace sharedfs::fs
