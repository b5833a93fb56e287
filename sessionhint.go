package redisservice

import (
	"hash/maphash"
	"sync/atomic"
	"time"
)

// touchHintSlots bounds a manager's touchHints: 64 KiB of slots, plus
// 16 bytes per session remembered.
const touchHintSlots = 1 << 13

// touchHints remembers, for sessions a manager has recently read or
// started, the lastActivity they had in Redis. A request whose touch is
// not due by it reads its session with a plain GET, one command, rather
// than with sessionLoadScript (EVALSHA and the script's GET). A hint only
// picks the command: the stored lastActivity decides, and when the GET
// shows a touch due (the session was rewritten meanwhile) the script runs
// after it. Sessions are remembered by a seeded hash of their id, one per
// slot: a collision costs the script, never a wrong answer. The zero
// value is not usable; a nil *touchHints remembers nothing. It is safe
// for concurrent use.
type touchHints struct {
	seed  maphash.Seed
	slots [touchHintSlots]atomic.Pointer[touchHint]
}

// touchHint is one session's hint.
type touchHint struct {
	h  uint64 // the id's hash
	at int64  // lastActivity, unix ms
}

func newTouchHints() *touchHints {
	return &touchHints{seed: maphash.MakeSeed()}
}

// due reports whether, by what th remembers of session id, a touch may
// be due at now: true when it remembers nothing of id.
func (th *touchHints) due(id string, now time.Time, touchEvery time.Duration) bool {
	if th == nil {
		return true
	}
	h := maphash.String(th.seed, id)
	p := th.slots[h%touchHintSlots].Load()
	return p == nil || p.h != h || now.Sub(time.UnixMilli(p.at)) >= touchEvery
}

// note remembers that session id's stored lastActivity is at.
func (th *touchHints) note(id string, at time.Time) {
	if th == nil || at.IsZero() {
		return
	}
	h := maphash.String(th.seed, id)
	slot := &th.slots[h%touchHintSlots]
	if p := slot.Load(); p != nil && p.h == h && p.at == at.UnixMilli() {
		return // unchanged: no allocation on the requests in between
	}
	slot.Store(&touchHint{h: h, at: at.UnixMilli()})
}
