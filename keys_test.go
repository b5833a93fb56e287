package redisservice

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestSetGet(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		mustSet(t, s, "k", "v1")
		if v, found, err := s.Get(ctx, "k"); v != "v1" || !found || err != nil {
			t.Errorf("Get(k) = %q, %v, %v; want v1, true, nil", v, found, err)
		}
		if v, found, err := s.Get(ctx, "missing"); v != "" || found || err != nil {
			t.Errorf("Get(missing) = %q, %v, %v; want \"\", false, nil", v, found, err)
		}
		if got := b.client.Get(ctx, b.raw("k")).Val(); got != "v1" {
			t.Errorf("raw GET of prefixed key = %q; want v1 (KeyPrefix not applied?)", got)
		}
		if n := b.client.Exists(ctx, "k").Val(); n != 0 {
			t.Errorf("unprefixed key exists; KeyPrefix leaked")
		}

		steps := []struct {
			name  string
			key   string
			value any
			opts  []SetOption
			want  bool
			after string
		}{
			{"NX on existing", "k", "v2", []SetOption{NX()}, false, "v1"},
			{"XX on existing", "k", "v3", []SetOption{XX()}, true, "v3"},
			{"XX on missing", "new", "x", []SetOption{XX()}, false, ""},
			{"NX on missing", "new", "n", []SetOption{NX()}, true, "n"},
			{"int value", "num", 42, nil, true, "42"},
			{"bytes value", "raw", []byte{0, 1, 2}, nil, true, "\x00\x01\x02"},
		}
		for _, st := range steps {
			ok, err := s.Set(ctx, st.key, st.value, st.opts...)
			if ok != st.want || err != nil {
				t.Errorf("%s: Set(%q) = %v, %v; want %v, nil", st.name, st.key, ok, err, st.want)
			}
			if got, _, _ := s.Get(ctx, st.key); got != st.after {
				t.Errorf("%s: Get(%q) = %q; want %q", st.name, st.key, got, st.after)
			}
		}
		if ok, err := s.Exists(ctx, "k"); !ok || err != nil {
			t.Errorf("Exists(k) = %v, %v; want true, nil", ok, err)
		}
		if ok, err := s.Exists(ctx, "missing"); ok || err != nil {
			t.Errorf("Exists(missing) = %v, %v; want false, nil", ok, err)
		}
	})
}

func TestSetTTL(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)

		// 2.5s: the key outlives the calls up to b.pass below, however
		// loaded the machine.
		if _, err := s.Set(ctx, "short", "v", WithTTL(2500*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if d, err := s.TTL(ctx, "short"); err != nil || d <= 1500*time.Millisecond || d > 2500*time.Millisecond {
			t.Errorf("TTL(short) = %v, %v; want about 2.5s", d, err)
		}
		mustSet(t, s, "forever", "v")
		if d, err := s.TTL(ctx, "forever"); d != NoExpiry || err != nil {
			t.Errorf("TTL(forever) = %v, %v; want NoExpiry", d, err)
		}
		if d, err := s.TTL(ctx, "missing"); d != KeyMissing || err != nil {
			t.Errorf("TTL(missing) = %v, %v; want KeyMissing", d, err)
		}

		// KeepTTL keeps it; a plain Set clears it.
		if _, err := s.Set(ctx, "short", "v2", KeepTTL()); err != nil {
			t.Fatal(err)
		}
		if d, _ := s.TTL(ctx, "short"); d <= 0 {
			t.Errorf("after KeepTTL, TTL = %v; want the old TTL kept", d)
		}
		b.pass(2500 * time.Millisecond)
		b.waitFor(t, "short key expires", func() bool {
			_, found, err := s.Get(ctx, "short")
			return !found && err == nil
		})
	})
}

func TestInvalidInputWritesNothing(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		mustSet(t, s, "k", "old")

		tests := []struct {
			name string
			call func() error
			want error
		}{
			{"Set negative TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(-time.Second)); return err }, ErrInvalidTTL},
			{"Set zero TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(0)); return err }, ErrInvalidTTL},
			{"Set sub-ms TTL", func() error { _, err := s.Set(ctx, "k", "x", WithTTL(999*time.Microsecond)); return err }, ErrInvalidTTL},
			{"Set NX and XX", func() error { _, err := s.Set(ctx, "k", "x", NX(), XX()); return err }, ErrInvalidArgument},
			{"Set KeepTTL and TTL", func() error { _, err := s.Set(ctx, "k", "x", KeepTTL(), WithTTL(time.Second)); return err }, ErrInvalidArgument},
			{"Set empty key", func() error { _, err := s.Set(ctx, "", "x"); return err }, ErrInvalidKey},
			{"SetJSON bad TTL", func() error { _, err := s.SetJSON(ctx, "k", 1, WithTTL(-1)); return err }, ErrInvalidTTL},
			{"SetJSON unmarshalable", func() error { _, err := s.SetJSON(ctx, "k", make(chan int)); return err }, ErrInvalidArgument},
			{"MSet bad TTL", func() error { return s.MSet(ctx, map[string]any{"k": "x", "k2": "y"}, WithTTL(time.Microsecond)) }, ErrInvalidTTL},
			{"MSet empty key", func() error { return s.MSet(ctx, map[string]any{"k": "x", "": "y"}) }, ErrInvalidKey},
			{"MSet NX", func() error { return s.MSet(ctx, map[string]any{"k": "x"}, NX()) }, ErrInvalidArgument},
			{"Expire zero", func() error { _, err := s.Expire(ctx, "k", 0); return err }, ErrInvalidTTL},
			{"Expire negative", func() error { _, err := s.Expire(ctx, "k", -time.Second); return err }, ErrInvalidTTL},
			{"Expire sub-ms", func() error { _, err := s.Expire(ctx, "k", time.Microsecond); return err }, ErrInvalidTTL},
			{"Del empty key", func() error { _, err := s.Del(ctx, "k", ""); return err }, ErrInvalidKey},
			{"HSet empty key", func() error { return s.HSet(ctx, "", "f", "v") }, ErrInvalidKey},
			{"HDel no fields", func() error { _, err := s.HDel(ctx, "k"); return err }, ErrInvalidArgument},
			{"GetJSON nil dst", func() error { _, err := s.GetJSON(ctx, "k", nil); return err }, ErrInvalidArgument},
			{"GetJSON non-pointer dst", func() error { var v struct{}; _, err := s.GetJSON(ctx, "k", v); return err }, ErrInvalidArgument},
		}
		for _, tt := range tests {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Errorf("%s: error = %v; want %v", tt.name, err, tt.want)
			}
		}
		if v, _ := b.client.Get(ctx, b.raw("k")).Result(); v != "old" {
			t.Errorf("after invalid calls k = %q; want old", v)
		}
		if d := b.client.PTTL(ctx, b.raw("k")).Val(); d != -1 {
			t.Errorf("after invalid calls PTTL(k) = %v; want no TTL", d)
		}
		if n := b.client.Exists(ctx, b.raw("k2"), b.raw("")).Val(); n != 0 {
			t.Errorf("invalid MSet wrote %d keys", n)
		}

		empty := []struct {
			name string
			call func() error
		}{
			{"Get", func() error { _, _, err := s.Get(ctx, ""); return err }},
			{"Exists", func() error { _, err := s.Exists(ctx, ""); return err }},
			{"Expire", func() error { _, err := s.Expire(ctx, "", time.Second); return err }},
			{"TTL", func() error { _, err := s.TTL(ctx, ""); return err }},
			{"MGet", func() error { _, err := s.MGet(ctx, "a", ""); return err }},
			{"SetJSON", func() error { _, err := s.SetJSON(ctx, "", 1); return err }},
			{"GetJSON", func() error { var v int; _, err := s.GetJSON(ctx, "", &v); return err }},
			{"HGet", func() error { _, _, err := s.HGet(ctx, "", "f"); return err }},
			{"HGetAll", func() error { _, err := s.HGetAll(ctx, ""); return err }},
			{"HDel", func() error { _, err := s.HDel(ctx, "", "f"); return err }},
		}
		for _, tt := range empty {
			if err := tt.call(); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("%s(\"\") error = %v; want ErrInvalidKey", tt.name, err)
			}
		}
	})
}

func TestExpire(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		mustSet(t, s, "k", "v")
		// 2.9s: 900ms of slack, and below the 3s of a rounded-up EXPIRE.
		if ok, err := s.Expire(ctx, "k", 2900*time.Millisecond); !ok || err != nil {
			t.Fatalf("Expire(k) = %v, %v; want true, nil", ok, err)
		}
		if d, _ := s.TTL(ctx, "k"); d <= 2*time.Second || d > 2900*time.Millisecond {
			t.Errorf("TTL after Expire(2.9s) = %v; want about 2.9s (milliseconds kept)", d)
		}
		if ok, err := s.Expire(ctx, "missing", time.Second); ok || err != nil {
			t.Errorf("Expire(missing) = %v, %v; want false, nil", ok, err)
		}
		if ok, err := s.Expire(ctx, "k", 100*time.Millisecond); !ok || err != nil {
			t.Fatalf("Expire(k, 100ms) = %v, %v", ok, err)
		}
		b.pass(150 * time.Millisecond)
		b.waitFor(t, "k expires", func() bool {
			ok, err := s.Exists(ctx, "k")
			return !ok && err == nil
		})
	})
}

func mustSet(t testing.TB, s *Service, key string, value any) {
	t.Helper()
	if ok, err := s.Set(context.Background(), key, value); !ok || err != nil {
		t.Fatalf("Set(%q) = %v, %v", key, ok, err)
	}
}

func TestLargeValues(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		big := strings.Repeat("0123456789abcdef", 5<<20/16) // 5 MiB
		if _, err := s.Set(ctx, "big", big, WithTTL(time.Minute)); err != nil {
			t.Fatalf("Set(5 MiB) = %v", err)
		}
		if v, found, err := s.Get(ctx, "big"); len(v) != len(big) || v != big || !found || err != nil {
			t.Errorf("Get(5 MiB) = %d bytes, %v, %v; want the value back", len(v), found, err)
		}
		in := map[string][]string{"lines": strings.Split(big[:3<<20], "f")}
		if _, err := s.SetJSON(ctx, "bigjson", in, WithTTL(time.Minute)); err != nil {
			t.Fatalf("SetJSON(3 MiB) = %v", err)
		}
		var out map[string][]string
		if found, err := s.GetJSON(ctx, "bigjson", &out); !found || err != nil || len(out["lines"]) != len(in["lines"]) {
			t.Errorf("GetJSON(3 MiB) = %d lines, %v, %v; want %d", len(out["lines"]), found, err, len(in["lines"]))
		}
	})
}
