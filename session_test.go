package redisservice

import (
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

func newSession(t testing.TB, s *Service, uid string, ttl time.Duration) string {
	t.Helper()
	id, err := NewSessionID()
	if err != nil {
		t.Fatal(err)
	}
	data := SessionData{UserID: uid, Email: uid + "@example.com", Role: "cashier", IP: "203.0.113.7", UserAgent: "till/1.0"}
	if err := s.CreateSession(ctxT(t), id, data, ttl); err != nil {
		t.Fatalf("CreateSession: %v", err)
	}
	return id
}

func TestNewSessionID(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		id, err := NewSessionID()
		if err != nil {
			t.Fatal(err)
		}
		if len(id) != 43 || !validSessionID(id) || strings.ContainsAny(id, "=+/") {
			t.Fatalf("NewSessionID() = %q; want 43 URL-unreserved characters", id)
		}
		if seen[id] {
			t.Fatalf("NewSessionID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestSessionLifecycle(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)

		raw := b.client.Get(ctx, b.raw("session:"+id)).Val()
		for _, field := range []string{`"userId":"u1"`, `"email":`, `"role":"cashier"`, `"createdAt":`, `"lastActivity":`, `"ip":"203.0.113.7"`, `"userAgent":"till/1.0"`} {
			if !strings.Contains(raw, field) {
				t.Errorf("stored session %s lacks %s", raw, field)
			}
		}
		got, found, err := s.GetSession(ctx, id)
		if !found || err != nil || got.UserID != "u1" || got.CreatedAt.IsZero() || got.LastActivity.IsZero() {
			t.Fatalf("GetSession = %+v, %v, %v", got, found, err)
		}
		if got, found, err := s.GetSession(ctx, "unknown-id"); found || err != nil || got != (SessionData{}) {
			t.Errorf("GetSession(unknown) = %+v, %v, %v; want zero, false, nil", got, found, err)
		}
		if ok, err := s.DestroySession(ctx, id); !ok || err != nil {
			t.Errorf("DestroySession = %v, %v; want true, nil", ok, err)
		}
		if ok, err := s.DestroySession(ctx, id); ok || err != nil {
			t.Errorf("second DestroySession = %v, %v; want false, nil", ok, err)
		}
		if ok, err := s.UpdateSessionActivity(ctx, id); ok || err != nil {
			t.Errorf("UpdateSessionActivity after destroy = %v, %v; want false, nil", ok, err)
		}
		if n := b.client.Exists(ctx, b.raw("session:"+id)).Val(); n != 0 {
			t.Errorf("UpdateSessionActivity resurrected a destroyed session")
		}
	})
}

func TestSessionWrittenByTheOriginalService(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		old := `{"userId":"u9","email":"a@b.c","role":"admin","createdAt":"2024-01-02T03:04:05.000Z","lastActivity":"2024-01-02T03:04:05.000Z","ip":"1.2.3.4","userAgent":"Mozilla/5.0"}`
		b.client.Set(ctx, b.raw("session:legacy-id_1"), old, 500*time.Millisecond)
		got, found, err := s.GetSession(ctx, "legacy-id_1")
		want := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
		if !found || err != nil || got.UserID != "u9" || got.Role != "admin" || !got.CreatedAt.Equal(want) || got.UserAgent != "Mozilla/5.0" {
			t.Fatalf("GetSession(old format) = %+v, %v, %v", got, found, err)
		}
		if ok, err := s.UpdateSessionActivity(ctx, "legacy-id_1"); !ok || err != nil {
			t.Fatalf("UpdateSessionActivity(old format) = %v, %v", ok, err)
		}
		if d := b.client.PTTL(ctx, b.raw("session:legacy-id_1")).Val(); d <= 0 || d > 500*time.Millisecond {
			t.Errorf("old session's PTTL after update = %v; want its remaining TTL kept", d)
		}
		got, _, err = s.GetSession(ctx, "legacy-id_1")
		if err != nil || got.UserAgent != "Mozilla/5.0" || !got.LastActivity.After(want) {
			t.Errorf("old session after update = %+v, %v", got, err)
		}

		// An old session without any TTL stays without one (KEEPTTL), still readable.
		b.client.Set(ctx, b.raw("session:legacy-id_2"), old, 0)
		if ok, err := s.UpdateSessionActivity(ctx, "legacy-id_2"); !ok || err != nil {
			t.Fatalf("UpdateSessionActivity(old format, no TTL) = %v, %v", ok, err)
		}
		if d := b.client.PTTL(ctx, b.raw("session:legacy-id_2")).Val(); d != -1 {
			t.Errorf("old session without TTL has PTTL %v after update; want -1 (none)", d)
		}
		b.client.Del(ctx, b.raw("session:legacy-id_2"))
		got, found, err = s.GetSession(ctx, "legacy-id_2")
		if found || err != nil {
			t.Errorf("GetSession after Del = %+v, %v, %v; want a miss", got, found, err)
		}
	})
}

func TestSessionSlidesToItsOwnTTL(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		ttl := 400 * time.Millisecond
		id := newSession(t, s, "u1", ttl)
		b.pass(250 * time.Millisecond)
		if ok, err := s.UpdateSessionActivity(ctx, id); !ok || err != nil {
			t.Fatalf("UpdateSessionActivity = %v, %v", ok, err)
		}
		if d := b.client.PTTL(ctx, b.raw("session:"+id)).Val(); d <= 300*time.Millisecond || d > ttl {
			t.Errorf("PTTL after update = %v; want the session's own %v again", d, ttl)
		}
		b.pass(500 * time.Millisecond)
		b.waitFor(t, "idle session expires", func() bool {
			_, found, err := s.GetSession(ctx, id)
			return !found && err == nil
		})
		if ok, _ := s.UpdateSessionActivity(ctx, id); ok {
			t.Errorf("UpdateSessionActivity of an expired session = true")
		}
	})
}

func TestSessionMaxLifetime(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		start := time.Now()
		clock := start
		var mu sync.Mutex
		now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
		advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock(); b.pass(d) }
		s := b.service(t, Options{SessionMaxLifetime: 600 * time.Millisecond, Now: now})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", 400*time.Millisecond)
		advance(300 * time.Millisecond)
		if ok, err := s.UpdateSessionActivity(ctx, id); !ok || err != nil {
			t.Fatalf("UpdateSessionActivity = %v, %v", ok, err)
		}
		if d := b.client.PTTL(ctx, b.raw("session:"+id)).Val(); d <= 0 || d > 300*time.Millisecond {
			t.Errorf("PTTL near the cap = %v; want at most the 300ms left of the lifetime", d)
		}
		advance(350 * time.Millisecond)
		if ok, _ := s.UpdateSessionActivity(ctx, id); ok {
			t.Errorf("UpdateSessionActivity past SessionMaxLifetime = true; want the session ended")
		}
		b.waitFor(t, "capped session is gone", func() bool {
			_, found, _ := s.GetSession(ctx, id)
			return !found
		})
	})
}

func TestSessionConcurrentUpdatesAndDestroy(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id := newSession(t, s, "u1", time.Minute)
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.UpdateSessionActivity(ctx, id); err != nil {
					t.Errorf("UpdateSessionActivity: %v", err)
				}
			}()
		}
		wg.Wait()
		got, found, err := s.GetSession(ctx, id)
		if !found || err != nil || got.Email != "u1@example.com" || got.IP != "203.0.113.7" {
			t.Fatalf("after 32 concurrent updates GetSession = %+v, %v, %v", got, found, err)
		}

		// Destroy racing updates: once destroyed, the session stays gone.
		id2 := newSession(t, s, "u2", time.Minute)
		for range 16 {
			wg.Add(1)
			go func() { defer wg.Done(); _, _ = s.UpdateSessionActivity(ctx, id2) }()
		}
		if ok, err := s.DestroySession(ctx, id2); !ok || err != nil {
			t.Errorf("DestroySession = %v, %v", ok, err)
		}
		wg.Wait()
		if _, found, _ := s.GetSession(ctx, id2); found {
			t.Errorf("a destroyed session came back after racing updates")
		}
	})
}

func TestDestroyUserSessions(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		var ids []string
		for range 10 { // spread over the slots of every cluster master
			ids = append(ids, newSession(t, s, "u1", time.Minute))
		}
		other := newSession(t, s, "u2", time.Minute)
		if _, err := s.DestroySession(ctx, ids[0]); err != nil {
			t.Fatal(err)
		}
		n, err := s.DestroyUserSessions(ctx, "u1")
		if n != 9 || err != nil {
			t.Errorf("DestroyUserSessions(u1) = %d, %v; want 9 (the live ones), nil", n, err)
		}
		for _, id := range ids {
			if _, found, _ := s.GetSession(ctx, id); found {
				t.Errorf("a session of u1 survived DestroyUserSessions")
			}
		}
		if _, found, _ := s.GetSession(ctx, other); !found {
			t.Errorf("DestroyUserSessions(u1) destroyed u2's session")
		}
		if n, err := s.DestroyUserSessions(ctx, "u1"); n != 0 || err != nil {
			t.Errorf("second DestroyUserSessions = %d, %v; want 0, nil", n, err)
		}
		if n, err := s.DestroyUserSessions(ctx, "nobody"); n != 0 || err != nil {
			t.Errorf("DestroyUserSessions(nobody) = %d, %v; want 0, nil", n, err)
		}
	})
}

func TestSessionIndexIsBounded(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{MaxSessionsPerUser: 3})
		ctx := ctxT(t)
		var ids []string
		for i := range 5 {
			ids = append(ids, newSession(t, s, "u1", time.Duration(10+i)*time.Second))
		}
		idx := b.raw("user-sessions:u1")
		if n := b.client.ZCard(ctx, idx).Val(); n != 3 {
			t.Errorf("index holds %d sessions; want the cap, 3", n)
		}
		if d := b.client.PTTL(ctx, idx).Val(); d <= 13*time.Second || d > 14100*time.Millisecond {
			t.Errorf("index PTTL = %v; want that of its last session (14s)", d)
		}
		for i, id := range ids {
			_, found, _ := s.GetSession(ctx, id)
			if want := i >= 2; found != want {
				t.Errorf("session %d found = %v; want %v (the two closest to expiring are evicted)", i, found, want)
			}
		}
	})
}

func TestSessionInvalidInput(t *testing.T) {
	t.Parallel()
	b := newBackend(t, "miniredis")
	s := b.service(t, Options{})
	ctx := ctxT(t)
	good := SessionData{UserID: "u1"}
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"empty id", s.CreateSession(ctx, "", good, time.Minute), ErrInvalidKey},
		{"long id", s.CreateSession(ctx, strings.Repeat("a", 257), good, time.Minute), ErrInvalidKey},
		{"glob id", s.CreateSession(ctx, "abc*", good, time.Minute), ErrInvalidKey},
		{"space id", s.CreateSession(ctx, "a b", good, time.Minute), ErrInvalidKey},
		{"no user", s.CreateSession(ctx, "abc", SessionData{}, time.Minute), ErrInvalidArgument},
		{"zero ttl", s.CreateSession(ctx, "abc", good, 0), ErrInvalidTTL},
		{"sub-ms ttl", s.CreateSession(ctx, "abc", good, time.Microsecond), ErrInvalidTTL},
		{"get empty", func() error { _, _, err := s.GetSession(ctx, ""); return err }(), ErrInvalidKey},
		{"update empty", func() error { _, err := s.UpdateSessionActivity(ctx, ""); return err }(), ErrInvalidKey},
		{"destroy empty", func() error { _, err := s.DestroySession(ctx, ""); return err }(), ErrInvalidKey},
		{"destroy user empty", func() error { _, err := s.DestroyUserSessions(ctx, ""); return err }(), ErrInvalidKey},
	}
	for _, tt := range tests {
		if !errors.Is(tt.err, tt.want) {
			t.Errorf("%s: error = %v; want %v", tt.name, tt.err, tt.want)
		}
	}
	if keys := b.mr.Keys(); len(keys) != 0 {
		t.Errorf("invalid calls wrote %v", keys)
	}
	for _, id := range []string{"../../etc", "abc*", strings.Repeat("a", 257)} {
		if _, found, err := s.GetSession(ctx, id); found || !errors.Is(err, ErrInvalidKey) {
			t.Errorf("GetSession(%.20q) = %v, %v; want ErrInvalidKey", id, found, err)
		}
		if ok, err := s.UpdateSessionActivity(ctx, id); ok || !errors.Is(err, ErrInvalidKey) {
			t.Errorf("UpdateSessionActivity(%.20q) = %v, %v; want ErrInvalidKey", id, ok, err)
		}
		if ok, err := s.DestroySession(ctx, id); ok || !errors.Is(err, ErrInvalidKey) {
			t.Errorf("DestroySession(%.20q) = %v, %v; want ErrInvalidKey", id, ok, err)
		}
	}
}

func TestSessionErrorsHideTheID(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		id, _ := NewSessionID()
		b.client.HSet(ctx, b.raw("session:"+id), "f", "v") // WRONGTYPE for every call
		_, _, err1 := s.GetSession(ctx, id)
		_, err2 := s.UpdateSessionActivity(ctx, id)
		b.client.Set(ctx, b.raw("session:"+id), "{not json", time.Minute)
		_, _, err3 := s.GetSession(ctx, id)
		for i, err := range []error{err1, err2, err3} {
			if err == nil || strings.Contains(err.Error(), id) {
				t.Errorf("error %d = %v; want an error without the session id", i+1, err)
			}
		}
		if !errors.Is(err3, ErrDecode) {
			t.Errorf("GetSession of bad JSON = %v; want ErrDecode", err3)
		}
	})
}

func FuzzSessionID(f *testing.F) {
	for _, seed := range []string{"", "abc", "a b", "abc*", "ok-._~", strings.Repeat("x", 257), "ü", "\x00", "session:1"} {
		f.Add(seed)
	}
	// One miniredis per fuzz process; each accepted id is created, read
	// back and destroyed, so ids never collide between inputs.
	b := newBackend(f, "miniredis")
	s := b.service(f, Options{})
	f.Fuzz(func(t *testing.T, id string) {
		ok := validSessionID(id)
		if ok != (id != "" && len(id) <= maxSessionIDLen && strings.Trim(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~") == "") {
			t.Fatalf("validSessionID(%q) = %v disagrees with the URL-unreserved rule", id, ok)
		}
		if ok && strings.ContainsAny(id, "*?[]\\:/ ") {
			t.Fatalf("validSessionID(%q) accepted a glob or separator character", id)
		}
		ctx := ctxT(t)
		err := s.CreateSession(ctx, id, SessionData{UserID: "fuzz"}, time.Minute)
		if !ok {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("CreateSession(%q) = %v; want ErrInvalidKey", id, err)
			}
			// The message must not depend on the id: compare with the empty id's.
			if want := s.CreateSession(ctx, "", SessionData{UserID: "fuzz"}, time.Minute); err.Error() != want.Error() {
				t.Fatalf("CreateSession(%q) error %q; want the id-free %q", id, err, want)
			}
			return
		}
		if err != nil {
			t.Fatalf("CreateSession(%q) = %v", id, err)
		}
		if got, found, err := s.GetSession(ctx, id); !found || err != nil || got.UserID != "fuzz" {
			t.Fatalf("GetSession(%q) = %+v, %v, %v; want the session just created", id, got, found, err)
		}
		if gone, err := s.DestroySession(ctx, id); !gone || err != nil {
			t.Fatalf("DestroySession(%q) = %v, %v; want true, nil", id, gone, err)
		}
	})
}

func FuzzSessionJSON(f *testing.F) {
	for _, seed := range []string{
		`{"userId":"u9","email":"a@b.c","role":"admin","createdAt":"2024-01-02T03:04:05.000Z","lastActivity":"2024-01-02T03:04:05.000Z","ip":"1.2.3.4","userAgent":"x"}`,
		`{"userId":"u","idleTimeoutMs":60000,"expiresAtMs":1764360000000}`,
		`{"createdAt":"not a time"}`, `[]`, `null`, `{"userId":1}`, `{`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var st storedSession
		if err := json.Unmarshal(raw, &st); err != nil {
			return // GetSession reports ErrDecode
		}
		b, err := json.Marshal(st)
		if err != nil {
			return // e.g. a year outside what JSON times can hold
		}
		var again storedSession
		if err := json.Unmarshal(b, &again); err != nil {
			t.Fatalf("a decoded session re-encodes to %s, which does not decode: %v", b, err)
		}
	})
}
