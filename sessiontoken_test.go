package redisservice

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCRC16(t *testing.T) {
	t.Parallel()
	// The check value of CRC-16/XMODEM, and Redis Cluster's spec examples.
	assert.Equal(t, uint16(0x31c3), crc16("123456789"))
	assert.Equal(t, uint16(12182), keySlot("foo"))
	assert.Equal(t, keySlot("user1000"), keySlot("{user1000}.following"))
	assert.Equal(t, keySlot("foo{}{bar}"), crc16("foo{}{bar}")&0x3fff, "an empty tag: the whole key")
	assert.Equal(t, keySlot("{bar"), crc16("{bar")&0x3fff, "no closing brace: the whole key")
	assert.Equal(t, keySlot("foo{{bar}}zap"), keySlot("{bar"), "the tag is {bar")
}

func TestSlotPadsCoverEverySlot(t *testing.T) {
	t.Parallel()
	pads := slotPads()
	for v, p := range pads {
		require.Equal(t, uint16(v), crc16(string(p[:]))&0x3fff, "pad for %d", v)
		require.False(t, strings.ContainsAny(string(p[:]), "{}"), "pad %q", p)
	}
}

// TestSameSlotKey checks that a session's write-token set lies in the
// session's slot, whatever braces the key prefix holds; on a real cluster,
// as the cluster itself computes slots.
func TestSameSlotKey(t *testing.T) {
	t.Parallel()
	id, err := NewSessionID()
	require.NoError(t, err)
	prefixes := []string{"", "app:", "{app}:", "a{b:", "a}b:", "{}:", "}{:", "x{y}z{w}:", "{:", "}:", "{}{a}:"}
	for _, prefix := range prefixes {
		key := prefix + sessionKey(id)
		w := sameSlotKey(key, sessionWritesSuffix)
		assert.Equal(t, keySlot(key), keySlot(w), "prefix %q: %q and %q", prefix, key, w)
		assert.True(t, strings.HasPrefix(w, key+sessionWritesSuffix), "prefix %q: %q", prefix, w)
	}
	t.Run("cluster", func(t *testing.T) {
		b := newBackend(t, "cluster")
		ctx := ctxT(t)
		for _, prefix := range prefixes {
			key := prefix + sessionKey(id)
			want, err := b.client.ClusterKeySlot(ctx, key).Result()
			require.NoError(t, err)
			assert.Equal(t, want, int64(keySlot(key)), "CLUSTER KEYSLOT %q", key)
			got, err := b.client.ClusterKeySlot(ctx, sameSlotKey(key, sessionWritesSuffix)).Result()
			require.NoError(t, err)
			assert.Equal(t, want, got, "prefix %q", prefix)
		}
	})
}
