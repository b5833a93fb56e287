package main

import (
	"testing"

	"github.com/vevurn/redisservice/internal/testlog"
)

// TestMain keeps go-redis's log lines and slog.Default()'s out of the
// output of a run that passes.
func TestMain(m *testing.M) { testlog.Main(m) }
