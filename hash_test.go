package redisservice

import (
	"testing"
)

func TestHash(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		for f, v := range map[string]any{"name": "Ada", "visits": 3} {
			if err := s.HSet(ctx, "h", f, v); err != nil {
				t.Fatalf("HSet(h, %s): %v", f, err)
			}
		}
		if v, found, err := s.HGet(ctx, "h", "visits"); v != "3" || !found || err != nil {
			t.Errorf("HGet(h, visits) = %q, %v, %v; want 3, true, nil", v, found, err)
		}
		if v, found, err := s.HGet(ctx, "h", "nope"); v != "" || found || err != nil {
			t.Errorf("HGet(h, nope) = %q, %v, %v; want \"\", false, nil", v, found, err)
		}
		if m, err := s.HGetAll(ctx, "h"); len(m) != 2 || m["name"] != "Ada" || err != nil {
			t.Errorf("HGetAll(h) = %v, %v", m, err)
		}
		if m, err := s.HGetAll(ctx, "missing"); m == nil || len(m) != 0 || err != nil {
			t.Errorf("HGetAll(missing) = %#v, %v; want empty non-nil map", m, err)
		}
		if n, err := s.HDel(ctx, "h", "name", "nope"); n != 1 || err != nil {
			t.Errorf("HDel = %d, %v; want 1, nil", n, err)
		}
		mustSet(t, s, "str", "x")
		if m, err := s.HGetAll(ctx, "str"); m == nil || len(m) != 0 || err == nil {
			t.Errorf("HGetAll(string key) = %#v, %v; want empty map and WRONGTYPE", m, err)
		}
	})
}
