package redisservice

import (
	"errors"
	"strings"
	"testing"
	"time"
)

type product struct {
	SKU   string   `json:"sku"`
	Price int      `json:"price"`
	Tags  []string `json:"tags"`
}

func TestJSON(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, b *backend) {
		s := b.service(t, Options{})
		ctx := ctxT(t)
		in := product{SKU: "A-1", Price: 250, Tags: []string{"hot"}}
		if ok, err := s.SetJSON(ctx, "p", in, WithTTL(time.Minute)); !ok || err != nil {
			t.Fatalf("SetJSON = %v, %v", ok, err)
		}
		if raw := b.client.Get(ctx, b.raw("p")).Val(); raw != `{"sku":"A-1","price":250,"tags":["hot"]}` {
			t.Errorf("stored JSON = %s; want plain JSON text", raw)
		}
		var out product
		if ok, err := s.GetJSON(ctx, "p", &out); !ok || err != nil || out.SKU != in.SKU || out.Price != in.Price {
			t.Errorf("GetJSON = %v, %v, %+v; want true, nil, %+v", ok, err, out, in)
		}
		if ok, err := s.GetJSON(ctx, "missing", &out); ok || err != nil {
			t.Errorf("GetJSON(missing) = %v, %v; want false, nil", ok, err)
		}

		b.client.Set(ctx, b.raw("bad"), "{not json", 0)
		b.client.Set(ctx, b.raw("str"), `"a string"`, 0)
		b.client.HSet(ctx, b.raw("hash"), "f", "v")
		for _, tt := range []struct {
			key  string
			want error
		}{{"bad", ErrDecode}, {"str", ErrDecode}} {
			var p product
			if ok, err := s.GetJSON(ctx, tt.key, &p); ok || !errors.Is(err, tt.want) {
				t.Errorf("GetJSON(%q) = %v, %v; want false, %v", tt.key, ok, err, tt.want)
			}
		}
		var p product
		if ok, err := s.GetJSON(ctx, "hash", &p); ok || err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Errorf("GetJSON(hash) = %v, %v; want false, WRONGTYPE error", ok, err)
		}
		if !s.IsConnected() {
			t.Errorf("IsConnected() = false after decode and WRONGTYPE errors; want true")
		}
	})
}
