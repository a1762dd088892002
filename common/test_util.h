// GoogleTest helpers for Status and Result, shared by every test binary.
#pragma once

#include <gtest/gtest.h>

#include "common/status.h"

#define SHAREDFS_STATUS_CHECK_(check, expr)                                 \
  do {                                                                      \
    const ::sharedfs::Status _st = ::sharedfs::internal::as_status((expr)); \
    check(_st.is_ok()) << #expr << " failed: " << _st.to_string();          \
  } while (0)

#define ASSERT_OK(expr) SHAREDFS_STATUS_CHECK_(ASSERT_TRUE, expr)
#define EXPECT_OK(expr) SHAREDFS_STATUS_CHECK_(EXPECT_TRUE, expr)
