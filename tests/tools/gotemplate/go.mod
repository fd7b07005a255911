module tuneship.test/gotemplate

go 1.19
