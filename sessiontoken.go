package redisservice

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"sync"
	"time"
)

// A session write must not apply twice when its reply is lost and
// go-redis sends it again. Every session script that writes carries a
// random write token and records it, for a few seconds, in a sorted set
// beside the session (same cluster slot); a script that finds its token
// there has run already and answers as it did then, without writing.

// sessionWritesSuffix names the set of recent write tokens of a session:
// "session:<id>:w", plus three characters when the key has no hash tag,
// which place it in the session's cluster slot. ':' never occurs in a
// session id, so it names no session.
const sessionWritesSuffix = ":w"

// writeTokenSlack is how long a write token outlives the call's deadline:
// a retry is sent before the deadline, and runs once it reaches Redis.
const writeTokenSlack = time.Second

// newWriteToken returns a random token for one session write.
func newWriteToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// writeTokenKeep returns how long, in milliseconds, a write token made
// under ctx must be remembered: until a retry of the write can no longer
// arrive.
func writeTokenKeep(ctx context.Context) int64 {
	keep := writeTokenSlack
	if dl, ok := ctx.Deadline(); ok {
		keep += max(time.Until(dl), 0)
	}
	return keep.Milliseconds()
}

// sameSlotKey returns key+suffix, plus three characters (never a brace)
// when key has no hash tag, so that Redis Cluster puts it in key's slot.
// A key without a hash tag is hashed whole, and so is key+suffix+pad; pad
// is chosen so that the CRC16 of the whole lands in key's slot.
func sameSlotKey(key, suffix string) string {
	if _, ok := hashTag(key); ok {
		return key + suffix // the tag decides, and it is the same
	}
	// CRC16 is linear: crc(a+p) = crc(a+"\x00\x00\x00") ^ crc(p) for a
	// three-byte p.
	want := crc16(key) & 0x3fff
	base := crc16(key+suffix+"\x00\x00\x00") & 0x3fff
	pad := slotPads()[base^want]
	return key + suffix + string(pad[:])
}

// hashTag returns the part of key that Redis Cluster hashes when it is
// not the whole key: between the first '{' and the next '}', if not empty.
func hashTag(key string) (string, bool) {
	open := strings.IndexByte(key, '{')
	if open < 0 {
		return "", false
	}
	end := strings.IndexByte(key[open+1:], '}')
	if end <= 0 {
		return "", false
	}
	return key[open+1 : open+1+end], true
}

// keySlot returns key's Redis Cluster hash slot.
func keySlot(key string) uint16 {
	if tag, ok := hashTag(key); ok {
		key = tag
	}
	return crc16(key) & 0x3fff
}

// crc16 is CRC-16/XMODEM, Redis Cluster's key hash.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// slotPadAlphabet has no brace, so a pad never makes a hash tag.
const slotPadAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// slotPads maps each 14-bit value v to three characters whose CRC16
// ends in v: 64³ strings cover all 16384 values. Built once, on first
// use (16384 entries of 3 bytes).
var slotPads = sync.OnceValue(func() *[1 << 14][3]byte {
	var pads [1 << 14][3]byte
	var set [1 << 14]bool
	for _, a := range []byte(slotPadAlphabet) {
		for _, b := range []byte(slotPadAlphabet) {
			for _, c := range []byte(slotPadAlphabet) {
				p := [3]byte{a, b, c}
				v := crc16(string(p[:])) & 0x3fff
				if !set[v] {
					set[v], pads[v] = true, p
				}
			}
		}
	}
	return &pads
})
