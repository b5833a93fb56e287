package redisservice

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestTouchHints(t *testing.T) {
	t.Parallel()
	now := time.Now()
	var none *touchHints
	none.note("a", now)
	assert.True(t, none.due("a", now, time.Minute), "nil hints remember nothing")

	th := newTouchHints()
	assert.True(t, th.due("a", now, time.Minute), "an id never noted")
	th.note("a", now.Add(-30*time.Second))
	assert.False(t, th.due("a", now, time.Minute), "noted 30s ago, touch every minute")
	assert.True(t, th.due("a", now.Add(30*time.Second), time.Minute), "noted a minute ago")
	assert.True(t, th.due("b", now, time.Minute), "another id")
	th.note("a", time.Time{})
	assert.False(t, th.due("a", now, time.Minute), "a zero lastActivity is not noted")
}
